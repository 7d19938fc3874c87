"""Autoencoders (eqvae_lib.autoencoders): configs, encode/decode, normalisation, save/load, LDM round trip, errors."""

import shutil
import warnings

import pytest
import torch
from diffusers import AutoencoderKL, VQModel

from eqvae_lib import autoencoders as ae
from eqvae_lib.latents import LatentNorm


def _img(b, c, s, seed=0):
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name,f,c_in", [("small-f4", 4, 1), ("small-f8", 8, 3)])
def test_small_configs_shapes(name, f, c_in):
    vae = ae.build_autoencoder(name, in_channels=c_in)
    assert ae.downsample_factor(vae) == f and vae.config.out_channels == c_in
    assert not vae.config.mid_block_add_attention and vae.config.norm_num_groups == 16
    x = _img(2, c_in, 32)
    z = ae.encode(vae, x)
    assert z.shape == (2, 4, 32 // f, 32 // f)
    assert ae.decode(vae, z).shape == x.shape
    # the decoder is fully convolutional: a transformed (smaller, rotated) latent decodes to f x its size
    assert ae.decode(vae, z[:, :, :3, :2]).shape == (2, c_in, 3 * f, 2 * f)


def test_kl_f8_is_the_sd_vae_architecture():
    vae = ae.build_autoencoder("kl-f8")
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863  # SD-VAE (sd-vae-ft-ema) parameter count
    assert ae.downsample_factor(vae) == 8 and vae.config.scaling_factor == 0.18215


def test_encode_mean_vs_sample():
    vae = ae.build_autoencoder("small-f4")
    x = _img(2, 1, 16)
    post = ae.encode_posterior(vae, x)
    assert torch.equal(ae.encode(vae, x, "mean"), post.mean)
    a = ae.encode(vae, x, "sample", generator=torch.Generator().manual_seed(3))
    b = ae.encode(vae, x, "sample", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, post.mean)
    with pytest.raises(ValueError, match="'mode'"):
        ae.encode(vae, x, "mode")


def test_latent_norm_rules():
    sd = ae.build_autoencoder("small-f4", scaling_factor=0.18215)
    shift, scale = ae.latent_norm(sd)
    assert shift.tolist() == [0.0] * 4 and torch.allclose(scale, torch.full((4,), 0.18215))
    sd3 = ae.build_autoencoder("small-f4", scaling_factor=1.5305, shift_factor=0.0609)
    shift, scale = ae.latent_norm(sd3)
    assert torch.allclose(shift, torch.full((4,), 0.0609)) and torch.allclose(scale, torch.full((4,), 1.5305))
    m = ae.build_autoencoder("small-f4", scaling_factor=0.5, latents_mean=(1.0, 2.0, 3.0, 4.0),
                             latents_std=(2.0, 4.0, 1.0, 0.5))
    shift, scale = ae.latent_norm(m)  # diffusers pipeline convention: (z - mean) * scaling_factor / std
    assert shift.tolist() == [1.0, 2.0, 3.0, 4.0] and torch.allclose(scale, torch.tensor([0.25, 0.125, 0.5, 1.0]))
    z = torch.randn(2, 4, 3, 3)
    norm = ae.latent_norm(m)  # the one normalisation object: LatentNorm, tied to the model's weights
    assert isinstance(norm, LatentNorm) and norm.ae_hash == ae.weights_hash(m)
    assert torch.allclose(norm.normalize(z), (z - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1))
    assert torch.allclose(norm.denormalize(norm.normalize(z)), z, atol=1e-6)
    assert not hasattr(ae, "normalize") and not hasattr(ae, "denormalize")  # no second implementation


def test_measure_latent_norm_standardises_and_survives_save_load(tmp_path):
    torch.manual_seed(0)
    vae = ae.build_autoencoder("small-f4", in_channels=3)
    x = _img(32, 3, 16)
    shift, scale = ae.measure_latent_norm(vae, x, latent="mean", batch_size=10)
    zn = ae.latent_norm(vae).normalize(ae.encode(vae, x, "mean"))
    assert torch.allclose(zn.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(zn.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4)
    ae.save_autoencoder(vae, tmp_path / "m")
    back = ae.load_autoencoder(tmp_path / "m")
    s2, c2 = ae.latent_norm(back)
    assert torch.equal(s2, shift) and torch.allclose(c2, scale)
    assert ae.weights_hash(back) == ae.weights_hash(vae)
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    # a Dataset of (x, label) gives the same numbers as the tensor
    ds = [(x[i], 0) for i in range(len(x))]
    s3, _ = ae.measure_latent_norm(back, ds, latent="mean", store=False)
    assert torch.allclose(s3, shift, atol=1e-6)


def test_save_overwrites_atomically(tmp_path):
    a, b = ae.build_autoencoder("small-f4"), ae.build_autoencoder("small-f4")
    ae.save_autoencoder(a, tmp_path / "m")
    ae.save_autoencoder(b, tmp_path / "m")
    assert ae.weights_hash(ae.load_autoencoder(tmp_path / "m")) == ae.weights_hash(b) != ae.weights_hash(a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left


def test_mismatched_checkpoint_names_first_tensor(tmp_path):
    ae.save_autoencoder(ae.build_autoencoder("small-f4", latent_channels=8), tmp_path / "c8")
    ae.save_autoencoder(ae.build_autoencoder("small-f4"), tmp_path / "c4")
    shutil.copy(tmp_path / "c4" / "config.json", tmp_path / "c8" / "config.json")
    with pytest.raises(ValueError, match=r"'encoder\.conv_out\.weight' has shape \(16, 64, 3, 3\)"):
        ae.load_autoencoder(tmp_path / "c8")
    with pytest.raises(FileNotFoundError, match="no such file"):
        ae.load_autoencoder(tmp_path / "nothing")


def test_pipeline_folder_and_deprecated_attention_names(tmp_path):
    vae = ae.build_autoencoder("small-f4", mid_block_add_attention=True)
    ae.save_autoencoder(vae, tmp_path / "pipe" / "vae")
    # rewrite the weights with the old diffusers attention names (as on the hub's sd-vae-ft-ema)
    from safetensors.torch import load_file, save_file
    f = tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors"
    sd = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v for k, v in load_file(f).items()}
    assert any(".query." in k for k in sd)
    save_file(sd, str(f))
    assert ae.weights_hash(ae.load_autoencoder(tmp_path / "pipe")) == ae.weights_hash(vae)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_kl_f8_ldm_export_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    vae = ae.build_autoencoder("kl-f8")
    path = ae.export_ldm_checkpoint(vae, tmp_path / f"model{suffix}")
    keys = (torch.load(path, weights_only=True)["state_dict"] if suffix == ".ckpt"
            else __import__("safetensors.torch").torch.load_file(str(path)))
    assert "encoder.mid.attn_1.q.weight" in keys and keys["encoder.mid.attn_1.q.weight"].dim() == 4
    assert "decoder.up.3.block.0.conv1.weight" in keys
    back = ae.load_autoencoder(path)  # from_single_file with the shipped local original_config
    assert isinstance(back, AutoencoderKL) and ae.weights_hash(back) == ae.weights_hash(vae)
    assert back.config.scaling_factor == 0.18215


def test_ldm_file_of_wrong_architecture_names_first_tensor(tmp_path):
    small = ae.build_autoencoder("small-f4", in_channels=3, block_out_channels=(32, 64, 64),
                                 mid_block_add_attention=True)
    path = ae.export_ldm_checkpoint(small, tmp_path / "small.ckpt")
    assert ae.weights_hash(ae.load_autoencoder(path)) == ae.weights_hash(small)  # the kit's file carries its config
    foreign = torch.load(path, weights_only=True)
    del foreign[ae.CONFIG_KEY]  # a foreign LDM file: tensors only
    torch.save(foreign, tmp_path / "foreign.ckpt")
    path = tmp_path / "foreign.ckpt"
    with pytest.raises(ValueError, match="encoder.conv_in.weight"):
        ae.load_autoencoder(path)  # default original_config is kl-f8
    back = ae.load_autoencoder(path, original_config=ae.ldm_original_config(small))
    assert ae.weights_hash(back) == ae.weights_hash(small)
    with pytest.raises(ValueError, match="mid-block attention"):
        ae.export_ldm_checkpoint(ae.build_autoencoder("small-f4"), tmp_path / "x.ckpt")


def test_original_config_over_an_embedded_config_names_what_it_changes(tmp_path):
    """A kit file carries its normalisation; an original_config passed anyway wins, but never silently."""
    small = ae.build_autoencoder("small-f4", in_channels=3, block_out_channels=(32, 64, 64),
                                 mid_block_add_attention=True)
    small.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    path = ae.export_ldm_checkpoint(small, tmp_path / "small.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file's own config: no warning, normalisation kept
        kept = ae.load_autoencoder(path)
    assert (kept.config.scaling_factor, kept.config.shift_factor) == (0.5, 0.1)
    # the LDM yaml carries scale_factor (kept: 0.5) but no shift: the shift is lost, and the warning says so
    with pytest.warns(UserWarning, match=r"carries its own config.*changes shift_factor 0\.1 -> None") as caught:
        back = ae.load_autoencoder(path, original_config=ae.ldm_original_config(small))
    assert "scaling_factor" not in str(caught[0].message)
    assert ae.weights_hash(back) == ae.weights_hash(small) and back.config.scaling_factor == 0.5


def test_vq_model_encode_decode():
    vq = VQModel(in_channels=1, out_channels=1, block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, num_vq_embeddings=32,
                 norm_num_groups=16, layers_per_block=1)
    x = _img(2, 1, 16)
    z = ae.encode(vq, x)
    assert ae.is_vq(vq) and z.shape == (2, 4, 8, 8) and ae.downsample_factor(vq) == 2
    rec, reg = ae.decode_with_loss(vq, z)
    assert rec.shape == x.shape and reg.dim() == 0 and reg > 0
    # decode quantises: decoding z equals decoding its nearest codebook vectors
    q = vq.quantize(z)[0]
    assert torch.allclose(ae.decode(vq, z), vq.decoder(vq.post_quant_conv(q)), atol=1e-5)


def test_build_errors():
    with pytest.raises(ValueError, match="'kl-f9'"):
        ae.build_autoencoder("kl-f9")
    with pytest.raises(ValueError, match="latent_chanels"):
        ae.build_autoencoder("small-f4", latent_chanels=4)
