"""Writes a small synthetic captioned dataset in the Flickr8k layout: drawn scenes with compositional captions.

    python -m beam_jobs.tools.sample_dataset --output_dir OUT_DIR [--num_images 300] [--image_size 128] [--seed 0]

Each picture shows one or two shapes (circle, square, triangle) in one of four colours on a plain background, with
five captions built from what was drawn ("a red circle above a blue square", "a blue square below a red circle",
...). The output is deterministic for a seed and needs nothing but Pillow: the demo runs every stage on it
offline, and the tests use it as a fixture. Layout::

    OUT_DIR/Flicker8k_Dataset/sample_00000.jpg ...
    OUT_DIR/Flickr8k_text/Flickr8k.token.txt
    OUT_DIR/Flickr8k_text/Flickr_8k.{train,dev,test}Images.txt      (70% / 15% / 15%)
"""
import os
import random
import sys

from PIL import Image, ImageDraw

from trainer import cli

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = {"above": "below", "left of": "right of"}
SPLIT_SHARES = (("train", 0.7), ("dev", 0.15), ("test", 0.15))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour, centre, radius) -> None:
    x, y = centre
    if shape == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    elif shape == "square":
        draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=colour)
    else:
        draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour)


def _single_captions(colour, shape, background, size_word) -> list[str]:
    return [f"a {colour} {shape}",
            f"a {colour} {shape} on a {background} background",
            f"a {size_word} {colour} {shape}",
            f"there is a {colour} {shape} in the picture",
            f"one {colour} {shape} on {background}"]


def _pair_captions(first, relation, second, background) -> list[str]:
    (colour1, shape1), (colour2, shape2) = first, second
    inverse = RELATIONS[relation]
    return [f"a {colour1} {shape1} {relation} a {colour2} {shape2}",
            f"a {colour2} {shape2} {inverse} a {colour1} {shape1}",
            f"a {colour1} {shape1} and a {colour2} {shape2}",
            f"there is a {colour1} {shape1} {relation} a {colour2} {shape2}",
            f"two shapes on a {background} background"]


def draw_scene(rng: random.Random, image_size: int) -> tuple[Image.Image, list[str]]:
    background = rng.choice(sorted(BACKGROUNDS))
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.4:
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        big = rng.random() < 0.5
        radius = int(image_size * (0.32 if big else 0.16))
        jitter = image_size // 10
        centre = (image_size // 2 + rng.randint(-jitter, jitter), image_size // 2 + rng.randint(-jitter, jitter))
        _draw_shape(draw, shape, COLOURS[colour], centre, radius)
        return image, _single_captions(colour, shape, background, "big" if big else "small")
    colour1, colour2 = rng.sample(sorted(COLOURS), 2)
    shape1, shape2 = rng.choice(SHAPES), rng.choice(SHAPES)
    relation = rng.choice(sorted(RELATIONS))
    radius = image_size // 7
    near, far = image_size // 4, 3 * image_size // 4
    offset = rng.randint(-image_size // 12, image_size // 12)
    if relation == "above":
        centres = (image_size // 2 + offset, near), (image_size // 2 - offset, far)
    else:
        centres = (near, image_size // 2 + offset), (far, image_size // 2 - offset)
    _draw_shape(draw, shape1, COLOURS[colour1], centres[0], radius)
    _draw_shape(draw, shape2, COLOURS[colour2], centres[1], radius)
    return image, _pair_captions((colour1, shape1), relation, (colour2, shape2), background)


def write_sample_dataset(out_dir: str, num_images: int = 300, image_size: int = 128, seed: int = 0) -> dict:
    """Writes the dataset; returns {split: [image names]}."""
    if num_images < 3:
        raise ValueError("--images must be at least 3 (one per split)")
    rng = random.Random(seed)
    images_dir = os.path.join(out_dir, "Flicker8k_Dataset")
    text_dir = os.path.join(out_dir, "Flickr8k_text")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(text_dir, exist_ok=True)
    names, lines = [], []
    for index in range(num_images):
        image, captions = draw_scene(rng, image_size)
        name = f"sample_{index:05d}.jpg"
        image.save(os.path.join(images_dir, name), quality=92)
        names.append(name)
        lines.extend(f"{name}#{n}\t{caption.capitalize()} ." for n, caption in enumerate(captions))
    with open(os.path.join(text_dir, "Flickr8k.token.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    splits, start = {}, 0
    for position, (split, share) in enumerate(SPLIT_SHARES):
        remaining = len(SPLIT_SHARES) - position - 1
        count = num_images - start if remaining == 0 else max(1, min(round(share * num_images),
                                                                     num_images - start - remaining))
        splits[split] = names[start:start + count]
        start += count
        with open(os.path.join(text_dir, f"Flickr_8k.{split}Images.txt"), "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name}\n" for name in splits[split]))
    return splits


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="imcap-sample-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", metavar="OUTPUT_DIR", help="where the dataset goes (or --output_dir)")
    parser.add_argument("--output_dir", dest="output_dir", metavar="DIR", help="where the dataset goes")
    parser.add_argument("--num_images", "--images", dest="images", type=cli.positive_int, default=300,
                        metavar="N", help="photos to draw")
    parser.add_argument("--image_size", type=cli.positive_int, default=128, help="their width and height in pixels")
    parser.add_argument("--seed", type=int, default=0, help="which scenes are drawn")
    args = parser.parse_args(argv)
    if bool(args.out_dir) == bool(args.output_dir):
        parser.error("give the output directory once: OUTPUT_DIR or --output_dir DIR")
    args.out_dir = args.out_dir or args.output_dir
    splits = write_sample_dataset(args.out_dir, args.images, args.image_size, args.seed)
    print(f"wrote {args.images} images to {args.out_dir} ({', '.join(f'{k} {len(v)}' for k, v in splits.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
