"""Constants that the library's layers share (configs, models, data): a leaf module that
imports nothing, so that any layer can import it without depending on another."""

# torchvision's ImageNet normalization (`transforms.Normalize`), which the ImageNet
# ResNet-18 weights and the releases' image pipelines use.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
