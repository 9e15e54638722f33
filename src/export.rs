//! Stage 2: checkpoint -> one ONNX graph per submodel.
