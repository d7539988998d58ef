"""Deployment: ONNX export (:mod:`zoo.deploy.onnx_export`, needs torch and ``onnx``) and :class:`OnnxPredictor`, the
Predictor's interface on ONNX Runtime without torch (``pip install promptable-medseg-zoo[deploy]``).

    from zoo.deploy import OnnxPredictor

    predictor = OnnxPredictor("litemedsam-onnx")  # zoo export onnx litemedsam litemedsam-onnx
"""

from zoo.deploy.runtime import OnnxPrediction, OnnxPredictor, RandomWeightsWarning

__all__ = ["OnnxPrediction", "OnnxPredictor", "RandomWeightsWarning"]
