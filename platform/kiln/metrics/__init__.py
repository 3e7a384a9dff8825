"""Metrics, one module per kind, each computed from sums that workers add with one all_reduce:

supervised   loss, accuracy, MAE and RMSE (classification, regression, forecasting)
ranking      HR@10, NDCG@10 and Recall@20 under the NCF protocol, and the popularity baseline
generation   the Fréchet distance between two sets of features
"""
