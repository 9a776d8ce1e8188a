"""dlib's face-recognition network: reading its weights, the PyTorch port, ONNX
export, dlib's chip geometry and dlib-bin as a reference. Imports nothing of the
trainer but `trainer.errors`."""
