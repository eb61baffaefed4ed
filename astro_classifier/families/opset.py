"""The ONNX opset of every exported graph: the model families trace their export form with
it (:func:`astro_classifier.families.image.export_image_encoder`) and so does
:mod:`astro_classifier.export`. A module of its own so that both import it from below."""

OPSET = 17
