"""The latent-to-frame decoder: shapes, that it learns, and that it never changes the encoder."""

import copy

import pytest
import torch

from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.jepa import JEPAWorldModel


@pytest.mark.parametrize("side", [16, 32, 48, 64])
def test_shapes_and_range(side):
    torch.manual_seed(0)
    decoder = Decoder(latent_dim=8, image_size=side, channels=3, width=4)
    images = decoder(torch.randn(5, 8))
    assert images.shape == (5, 3, side, side)
    assert images.min() >= 0 and images.max() <= 1
    frames = decoder.frames(torch.randn(2, 3, 8))  # any leading dims
    assert frames.shape == (2, 3, side, side, 3) and frames.dtype == torch.uint8


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        Decoder(latent_dim=8, image_size=2)
    with pytest.raises(ValueError, match="latent_dim"):
        Decoder(latent_dim=0, image_size=16)


def test_a_small_decoder_learns_to_draw_a_few_frames():
    torch.manual_seed(0)
    decoder = Decoder(latent_dim=4, image_size=16, width=8)
    z = torch.randn(4, 4)
    frames = torch.zeros(4, 16, 16, 3, dtype=torch.uint8)
    for i in range(4):  # four distinct pictures: a bright square in a different quadrant each
        row, col = divmod(i, 2)
        frames[i, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] = 255
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    first = decoder.loss(z, frames).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = decoder.loss(z, frames)
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 10


def test_decoder_training_never_changes_the_encoder():
    """Even fed latents still attached to a trainable encoder's graph, the decoder sends no gradient back."""
    torch.manual_seed(0)
    model = JEPAWorldModel(
        (16, 16, 3),
        2,
        latent_dim=8,
        hidden_dim=8,
        mlp_dim=8,
        ensemble_size=2,
        vit_size="micro",
        image_size=16,
        patch_size=4,
    )
    decoder = Decoder(latent_dim=8, image_size=16, width=4)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert any(p.requires_grad for p in model.backbone.parameters())  # a fine-tuned encoder, not a frozen one
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    frames = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    for _ in range(3):
        optimizer.zero_grad()
        z = model.encode(frames)  # (6, 8), in the encoder's graph
        assert z.requires_grad
        decoder.loss(z, frames).backward()
        optimizer.step()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert any(p.grad is not None for p in decoder.parameters())


def test_channels_last_layout_draws_and_learns_as_the_default_layout_does():
    torch.manual_seed(0)
    decoder = Decoder(8, 32, 3, 4)
    reference = copy.deepcopy(decoder).to(memory_format=torch.contiguous_format)
    assert decoder.head.weight.is_contiguous(memory_format=torch.channels_last)
    assert reference.head.weight.is_contiguous()
    z = torch.randn(5, 8)
    frames = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    drawn = decoder(z)
    # The same modules on default-layout tensors, written out: stem, upsampling, head, sigmoid.
    expected = torch.sigmoid(reference.head(reference.upsample(reference.stem(z).view(5, -1, 4, 4))))
    torch.testing.assert_close(drawn, expected, rtol=1e-5, atol=1e-6)
    decoder.loss(z, frames).backward()
    target = frames.permute(0, 3, 1, 2).float() / 255
    torch.nn.functional.mse_loss(expected, target).backward()
    for ours, theirs in zip(decoder.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6)
