"""Vision-language backbones: how stock transformers VLMs are built, loaded and made small."""
