"""Pure analyses: tensors or records in; tensors, dataclasses or graphs out. No I/O, no plots."""
