"""ONNX plumbing every stage uses: the graph index and its edits, the constant resolver, shapes and ranks,
model loading and atomic saving, external data, and model input specs."""
