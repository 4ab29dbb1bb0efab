"""Models DADS evaluated that torchvision lacks: NiN and tiny-YOLOv2 (VOC), with random weights.

Both are chains of convolutions, which is why DADS used them beside its DAG models. Each factory returns an
``nn.Module`` that ``torch.fx.symbolic_trace`` can trace; weights come from the harness's seed (``build_model`` seeds
torch before calling the factory) and batch-norm statistics are calibrated there, as for torchvision's models.
"""

from __future__ import annotations

from torch import nn


def _mlpconv(in_channels: int, channels: int, kernel: int, stride: int, padding: int,
             out_channels: int | None = None) -> list[nn.Module]:
    """NiN's "mlpconv" block: a k x k convolution, then two 1x1 convolutions (the micro MLP), each with a ReLU."""
    last = channels if out_channels is None else out_channels
    return [nn.Conv2d(in_channels, channels, kernel, stride, padding), nn.ReLU(),
            nn.Conv2d(channels, channels, 1), nn.ReLU(),
            nn.Conv2d(channels, last, 1), nn.ReLU()]


def nin(num_classes: int = 1000) -> nn.Module:
    """Network in Network (Lin, Chen, Yan, ICLR 2014), the ImageNet model the authors released for Caffe.

    Four mlpconv blocks (96, 256, 384, 1024 channels), max-pooling 3x3/2 between them, dropout after the third, and
    global average pooling over the last block's ``num_classes`` maps instead of fully connected layers. Caffe rounds
    pooled sizes up, hence ``ceil_mode``: 224 -> 54 -> 27 -> 13 -> 6 -> 1.
    """
    return nn.Sequential(
        *_mlpconv(3, 96, 11, 4, 0), nn.MaxPool2d(3, 2, ceil_mode=True),
        *_mlpconv(96, 256, 5, 1, 2), nn.MaxPool2d(3, 2, ceil_mode=True),
        *_mlpconv(256, 384, 3, 1, 1), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Dropout(0.5),
        *_mlpconv(384, 1024, 3, 1, 1, out_channels=num_classes),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
    )


def _conv_bn_leaky(in_channels: int, out_channels: int) -> list[nn.Module]:
    # Darknet's batch-normalised convolution has no bias of its own; the batch norm carries it.
    return [nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.1)]


def tiny_yolov2(num_classes: int = 20, num_anchors: int = 5) -> nn.Module:
    """tiny-YOLOv2 for VOC (Redmon & Farhadi, CVPR 2017; Darknet's yolov2-tiny-voc.cfg), without the region layer.

    Nine 3x3/1x1 convolutions (BN + leaky ReLU 0.1 except the last, linear one) and six 2x2 max-pools; a 416x416
    input gives a 13x13 grid of ``num_anchors * (5 + num_classes)`` = 125 channels. The sixth pool has stride 1 and
    Darknet's "same" padding: one extra row and column at the bottom and right that never win the max (Darknet reads
    them as -FLT_MAX). Replicating the edge gives exactly that; zero padding would not, since leaky ReLU outputs can
    be negative.
    """
    widths = [3, 16, 32, 64, 128, 256, 512]
    layers: list[nn.Module] = []
    for i in range(5):
        layers += [*_conv_bn_leaky(widths[i], widths[i + 1]), nn.MaxPool2d(2, 2)]
    layers += [*_conv_bn_leaky(256, 512), nn.ReplicationPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, 1)]
    layers += [*_conv_bn_leaky(512, 1024), *_conv_bn_leaky(1024, 1024),
               nn.Conv2d(1024, num_anchors * (5 + num_classes), 1)]
    return nn.Sequential(*layers)
