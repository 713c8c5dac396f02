"""Data: where each data set comes from, decoded once into tensors, and fed in batches."""
from .batches import BatchLoader, TensorImageDataset, random_hflip
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    DataNotFoundError,
    find_fashion_mnist,
    load_fashion_mnist_tensors,
    load_fashionMNIST,
    load_transformed_fashionMNIST,
    read_idx,
)
from .flowers import (
    FLOWER_CLASSES,
    FLOWER_PHOTOS_URL,
    find_flowers,
    flowers_augment,
    load_flowers_tensors,
    prepare_flowers,
)

__all__ = [
    "BatchLoader", "TensorImageDataset", "random_hflip",
    "FASHION_MNIST_CLASSES", "DataNotFoundError", "find_fashion_mnist",
    "load_fashion_mnist_tensors", "load_fashionMNIST", "load_transformed_fashionMNIST", "read_idx",
    "FLOWER_CLASSES", "FLOWER_PHOTOS_URL", "find_flowers", "flowers_augment",
    "load_flowers_tensors", "prepare_flowers",
]
