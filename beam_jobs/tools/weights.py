"""imcap-weights: Keras' ImageNet Xception weights on a machine without internet access.

    imcap-weights                   # what --weights imagenet uses here (exit 0 if it works offline, 1 if not)
    imcap-weights install FILE      # check FILE and put it where --weights imagenet (and Keras) finds it
    imcap-weights download          # on a machine with internet access: Keras' file, to carry to one without

``--weights imagenet`` (the default of imcap-extract, imcap-caption, imcap-quantize and imcap-predict) makes Keras
download its published weights on first use into ``$KERAS_HOME/models/`` (``~/.keras/models/``). Offline, get that
file once on any machine with internet access (``imcap-weights download`` prints where it is, or fetch the URL
`schemas.backbones.KERAS_WEIGHTS_URL`) and install it:

- Keras' own file (MD5 as Keras publishes it) is copied into Keras' cache under Keras' name, where Keras itself
  finds it, for imcap and for any other Keras program;
- any other Keras weights file of the same tensors (``.weights.h5`` or ``.h5``, with or without the classifier
  top) is loaded and checked tensor by tensor against the ImageNet weights' SHA-256, and saved beside Keras' file as
  `schemas.backbones.INSTALLED_WEIGHTS_FILE`, which imcap uses when Keras' own is absent;
- anything else is refused with what it is: other weights can still be used with ``--weights FILE``.

Install the file on every machine that runs a job with ``--weights imagenet`` offline (the launcher and local
workers share one). Remote workers with internet access download it themselves; without, pass
``--weights gs://.../file`` instead.
"""
import argparse
import hashlib
import os
import shutil
import sys

from beam_jobs import runtime
from schemas import backbones, fileio
from trainer import cli


class WeightsError(ValueError):
    """The file is not Keras' ImageNet Xception, or cannot be installed."""


def md5_of(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with fileio.open_read(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tensors(path: str):
    """The Xception without top holding ``path``'s weights (a file of the model with its top is accepted too)."""
    cli.quiet_tensorflow()
    import keras

    local = fileio.local_copy(path)
    notop = keras.applications.Xception(weights=None, include_top=False, pooling="avg", input_shape=(71, 71, 3))
    try:
        notop.load_weights(local)
        return notop
    except Exception as notop_error:  # Keras raises several types for a file of another model
        full = keras.applications.Xception(weights=None, include_top=True)
        try:
            full.load_weights(local)
        except Exception:
            raise WeightsError(f"{path} is not a Keras weights file of Xception ({type(notop_error).__name__}: "
                               f"{runtime.first_line(str(notop_error))})") from notop_error
        for layer in notop.layers:
            layer.set_weights(full.get_layer(layer.name).get_weights())
        return notop


def install(path: str, home: str | None = None, expected_sha256: str = backbones.IMAGENET_SHA256) -> str:
    """Checks ``path`` and installs it (see the module's docstring); returns a sentence saying what was done."""
    if not fileio.exists(path):
        raise WeightsError(f"{path}: no such file")
    models = os.path.join(home or backbones.keras_home(), "models")
    if md5_of(path) == backbones.KERAS_WEIGHTS_MD5:
        def copy(target):
            with fileio.open_read(path) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        target = fileio.write_local_atomically(os.path.join(models, backbones.KERAS_WEIGHTS_FILE), copy)
        return (f"installed Keras' published ImageNet Xception file (MD5 {backbones.KERAS_WEIGHTS_MD5}) as {target}: "
                "Keras loads it from there without a download")
    model = load_tensors(path)
    digest = backbones.weights_digest(model)
    if digest != expected_sha256:
        raise WeightsError(f"{path} holds Xception weights, but not Keras' ImageNet ones (SHA-256 of its tensors "
                           f"{digest[:12]}..., ImageNet's {expected_sha256[:12]}...); to extract features with them "
                           f"anyway, pass --weights {path}")
    target = fileio.write_local_atomically(os.path.join(models, backbones.INSTALLED_WEIGHTS_FILE), model.save_weights,
                                           suffix=".weights.h5")
    shadowed = os.path.join(models, backbones.KERAS_WEIGHTS_FILE)
    note = (f"; {shadowed} exists and Keras' own file comes first (remove it if it is damaged)"
            if os.path.isfile(shadowed) else "")
    return (f"checked {path}: the ImageNet Xception weights (tensor SHA-256 {digest[:12]}...); installed as {target}, "
            f"which --weights imagenet uses without a download{note}")


def status(home: str | None = None) -> tuple[bool, list[str]]:
    """(whether --weights imagenet works offline here, lines that say what is where)."""
    home = home or backbones.keras_home()
    models = os.path.join(home, "models")
    lines = [f"Keras' folder: {home}" + (" ($KERAS_HOME)" if "KERAS_HOME" in os.environ else "")]
    keras_file = os.path.join(models, backbones.KERAS_WEIGHTS_FILE)
    keras_ok = os.path.isfile(keras_file) and md5_of(keras_file) == backbones.KERAS_WEIGHTS_MD5
    if os.path.isfile(keras_file):
        lines.append(f"Keras' file: {keras_file} " + ("(MD5 as published)" if keras_ok else
                     "(MD5 differs from Keras' published one: Keras will download it again)"))
    else:
        lines.append(f"Keras' file: none ({keras_file})")
    installed = os.path.join(models, backbones.INSTALLED_WEIGHTS_FILE)
    installed_ok = os.path.isfile(installed)
    lines.append(f"imcap's checked copy: {installed}" if installed_ok else f"imcap's checked copy: none ({installed})")
    source = backbones.imagenet_source(home)
    if source.kind == backbones.KERAS_CACHE and keras_ok:
        lines.append("--weights imagenet: Keras' file, offline")
    elif source.kind == backbones.INSTALLED:
        lines.append("--weights imagenet: imcap's checked copy, offline")
    elif installed_ok:
        lines.append("--weights imagenet: Keras downloads its file again (its damaged copy comes first; remove it "
                     "to use imcap's checked copy offline)")
    else:
        lines.append(f"--weights imagenet: Keras downloads {backbones.KERAS_WEIGHTS_URL} on first use (needs "
                     f"internet access). Offline: {backbones.INSTALL_HINT}")
    offline = (source.kind == backbones.KERAS_CACHE and keras_ok) or source.kind == backbones.INSTALLED
    return offline, lines


def download() -> str:
    """Keras' file into Keras' cache (Keras checks its MD5); returns its path."""
    cli.quiet_tensorflow()
    import keras

    try:
        return keras.utils.get_file(backbones.KERAS_WEIGHTS_FILE, backbones.KERAS_WEIGHTS_URL,
                                    cache_subdir="models", file_hash=backbones.KERAS_WEIGHTS_MD5)
    except Exception as error:  # Keras raises bare Exceptions for network failures, ValueError for a bad hash
        raise WeightsError(f"could not download {backbones.KERAS_WEIGHTS_URL} ({type(error).__name__}: "
                           f"{runtime.first_line(str(error))}); this needs internet access") from error


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="imcap-weights", description=__doc__.split("\n\n")[0],
                                epilog="Keras' folder is $KERAS_HOME, else ~/.keras.")
    commands = parser.add_subparsers(dest="command", metavar="{install,download}", parser_class=cli.ArgumentParser,
                                     help="without one: say what --weights imagenet uses here")
    install_command = commands.add_parser("install", help="check a weights file and install it for --weights imagenet")
    install_command.add_argument("file", metavar="FILE", help="Keras' xception_weights_tf_dim_ordering_tf_kernels_"
                                 "notop.h5, or any Keras weights file of the same tensors (any Beam filesystem)")
    commands.add_parser("download", help="on a machine with internet access: fetch Keras' file into Keras' folder "
                        "and print its path")
    return parser.parse_args(argv)


def run(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "install":
        print(install(args.file))
        return 0
    if args.command == "download":
        path = download()
        print(f"{path}\n(Keras' published file; on a machine without internet access: imcap-weights install "
              f"{os.path.basename(path)})")
        return 0
    offline, lines = status()
    print("\n".join(lines))
    return 0 if offline else 1


def main(argv=None) -> int:
    cli.setup_logging()
    try:
        return run(argv)
    except (WeightsError, OSError) as error:
        print(f"error: {runtime.first_line(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
