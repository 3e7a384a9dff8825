"""A filesystem that counts what the model registry asks of it (tests and the registry
benchmark): on an object store each file's information or read is a request, and each listing
one per thousand keys."""

from collections import Counter

import pyarrow.fs as pafs


class CountingHandler(pafs.FileSystemHandler):
    """Arrow's local filesystem, with a count of each kind of call (`calls`)."""

    def __init__(self):
        self.local, self.calls = pafs.LocalFileSystem(), Counter()

    def get_type_name(self):
        return "counting"

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        self.calls["file_info"] += len(paths)
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self.calls["listing"] += 1
        return self.local.get_file_info(selector)

    def open_input_stream(self, path):
        self.calls["read"] += 1
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        self.calls["read"] += 1
        return self.local.open_input_file(path)

    # writing, not counted

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_output_stream(self, path, metadata):
        return self.local.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path, metadata=metadata)
