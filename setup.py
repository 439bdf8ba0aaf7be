"""passion-deploy: real low-bit deployment of PassionSR-quantized one-step diffusion SR."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "passion_deploy" / "__init__.py").read_text()).group(1)

# kernels/, export/ and benchmarks/ are top-level folders in the repo but install inside the
# package (passion_deploy.kernels, passion_deploy.export, passion_deploy.benchmarks), so nothing
# generic lands in site-packages. package_dir maps each package name to its folder; an editable
# install (pip install -e) maps them the same way through setuptools' import finder.
TOP_LEVEL = ("export", "kernels", "benchmarks")
package_dir = {"passion_deploy": "passion_deploy"}
packages = ["passion_deploy"] + [f"passion_deploy.{p}" for p in find_packages("passion_deploy")]
for top in TOP_LEVEL:
    package_dir[f"passion_deploy.{top}"] = top
    packages += [f"passion_deploy.{top}"] + [f"passion_deploy.{top}.{p}" for p in find_packages(top)]

setup(
    name="passion-deploy",
    version=VERSION,
    description="Calibrate, compile and verify PassionSR W8A8/W6A6 one-step diffusion super-resolution",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"passion_deploy": ["assets/*", "assets/*/*", "assets/*/*/*"]},
    install_requires=[
        "torch>=2.1",
        "diffusers>=0.30",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pillow>=9",
        "pyyaml>=6",
        "tqdm>=4.60",
    ],
    extras_require={
        # scikit-image: the tiny model's photos (training, held-out crops); triton: kernel tests in its interpreter
        "test": ["pytest>=7", "onnx>=1.16", "onnxruntime>=1.17", "scikit-image>=0.22", "triton>=3.0", "matplotlib>=3.5",
                 "import-linter>=2.1",  # lint-imports: the layering contracts in .importlinter
                 "nvidia-pytriton>=0.5", "tritonclient[http,grpc]>=2.40", "ray>=2.9",  # the serve and Ray tests
                 "openvino>=2025.0", "nncf>=2.14"],  # the openvino target's tests and passion-bench's NNCF INT8 baseline
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17"],  # the onnx export target and its runtime
        # the openvino target (it lowers through ONNX) and passion-bench's OpenVINO / NNCF INT8 baselines
        "openvino": ["openvino>=2025.0", "nncf>=2.14", "onnx>=1.16", "onnxruntime>=1.17"],
        "train": ["scikit-image>=0.22"],
        "report": ["matplotlib>=3.5"],  # passion-bench --report charts
        "gpu": ["tensorrt", "pycuda", "onnxruntime-gpu"],
        # passion-serve (Triton Inference Server via PyTriton, clients via tritonclient), passion-batch (Ray)
        "serve": ["nvidia-pytriton>=0.5", "tritonclient[http,grpc]>=2.40", "ray>=2.9", "onnxruntime>=1.17"],
    },
    entry_points={
        "console_scripts": [
            "passion-sr=passion_deploy.cli.sr:main",
            "passion-demo=passion_deploy.cli.demo:main",
            "passion-calibrate=passion_deploy.cli.calibrate:main",
            "passion-export=passion_deploy.cli.export:main",
            "passion-bench=passion_deploy.cli.bench:main",
            "passion-import=passion_deploy.cli.import_passionsr:main",
            "passion-serve=passion_deploy.cli.serve:main",
            "passion-batch=passion_deploy.cli.batch:main",
        ]
    },
)
