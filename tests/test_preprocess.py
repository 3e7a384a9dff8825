"""kiln.preprocess: pure functions over a model's stored transform."""

from kiln import preprocess


def test_a_models_named_columns_are_its_numbers_then_its_texts():
    numbers = {"standardize": preprocess.standardization([0.0, 1.0], [1.0, 2.0], ["age", "pay"])}
    assert preprocess.input_columns(numbers) == ["age", "pay"]
    with_text = numbers | {"categories": {"city": ["lyon", "paris"], "plan": ["free"]}}
    assert preprocess.input_columns(with_text) == ["age", "pay", "city", "plan"]
    assert preprocess.input_columns({"image": {"mean": [0.5], "std": [0.2]}}) == []
    assert preprocess.input_columns({"offset": "last_value", "scale": 1.0}) == []
