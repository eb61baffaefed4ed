"""astroclf: classify astronomical alerts and light curves with ONNX models.

``__version__`` is the package's release version, written here only: pyproject.toml reads it
(``[tool.setuptools.dynamic]``), the CLI prints it, and every exported model records it as
``package_version``. It follows the releases of the shipped models.
"""

__version__ = "0.3.0"
