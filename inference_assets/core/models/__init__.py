"""Models: what the ``model`` setting names (an architecture with weights, a checkpoint, a
TorchScript or ONNX file, a folder with a model card) loaded into a classifier with its class
names and preprocessing; the same network converted for a faster CPU runtime (OpenVINO, ONNX
Runtime); and the code versions of the partitioned assets, derived from the model without loading it.
"""
