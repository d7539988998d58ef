"""Names the exporter writes and the ONNX runtime reads (no torch): files, graph inputs and outputs, metadata keys."""

ENCODER_FILE = "image_encoder.onnx"
DECODER_FILE = "prompt_decoder.onnx"
PROCESSOR_CONFIG_FILE = "processor_config.json"
#: ONNX opset of the exported graphs.
OPSET = 17
#: Prefix of the zoo's keys in each graph's ``metadata_props`` (family, processor_type, weights_origin, graph).
METADATA_PREFIX = "zoo."

MODEL_INPUT = "model_input"
POINT_COORDS = "point_coords"
POINT_LABELS = "point_labels"
BOXES = "boxes"
MASK_INPUT = "mask_input"
HAS_MASK_INPUT = "has_mask_input"
LOW_RES_LOGITS = "low_res_logits"
IOU_PREDICTIONS = "iou_predictions"
#: 2D decoder output: the kept mask's logits upsampled to the model input.
MODEL_GRID_LOGITS = "logits"
#: 3D decoder output: the kept mask upsampled to the crop and thresholded (bool).
MODEL_GRID_MASK = "mask"
