"""Write a small dataset in the plain folder format, to try `policysearch init` and a search on
data of one's own (README, "From your own folder of images to a search").

The data is drawn here, so nothing is downloaded: 400 road scenes of 64x64 pixels, a sky whose
light says the weather and a grey road receding to the horizon with white lane markings. Two
tasks with names of the user's choosing: ``weather`` (classification: sunny, overcast, night;
``labels.csv``) and ``markings`` (segmentation: background, marking; ``masks/<stem>.png``).
Brightness and colour changes can hide the weather, so the search has something to find.

    python examples/make_folder_dataset.py [FOLDER]     # default: data/streets

Unlike the other examples it writes data, not a search: into ``data/streets/`` of the folder it
runs in.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64
COUNT = 400
WEATHER = {  # sky colour at the top and at the horizon, and the light on the road
    "sunny": ((110, 150, 215), (180, 205, 235), 1.0),
    "overcast": ((145, 150, 165), (190, 195, 205), 0.8),
    "night": ((45, 45, 75), (80, 80, 110), 0.45),
}


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """One image (H x W x 3 uint8), its markings mask (0/1) and its weather."""
    weather = str(rng.choice(list(WEATHER)))
    top, horizon_colour, light = WEATHER[weather]
    exposure = rng.uniform(0.55, 1.4)  # the camera's: the weather is not the brightness alone
    tint = rng.uniform(0.85, 1.15, 3)
    horizon = int(rng.integers(SIZE // 3, SIZE // 2))
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    image[:horizon] = (np.array(top) * (1 - t) + np.array(horizon_colour) * t)[:, None, :]
    image[horizon:] = np.array((90, 110, 70)) * light  # verge
    mask = np.zeros((SIZE, SIZE), np.uint8)
    centre = SIZE / 2 + rng.uniform(-10, 10)
    phase = rng.uniform(0, 2)
    for y in range(horizon, SIZE):
        depth = (y - horizon + 1) / (SIZE - horizon)  # 0 at the horizon, 1 at the bottom
        half = 3 + depth * SIZE * 0.45
        x0, x1 = int(max(0, centre - half)), int(min(SIZE, centre + half))
        image[y, x0:x1] = np.array((95, 95, 100)) * light
        w = 1 + int(depth * 3)  # lines widen towards the camera
        if int(depth * 8 + phase) % 2 == 0:  # dashed centre line
            m0 = int(centre - w / 2)
            mask[y, m0:m0 + w] = 1
        for edge in (x0 + 1, x1 - 1 - w):  # solid edge lines
            mask[y, max(0, edge):max(0, edge + w)] = 1
    image[mask == 1] = np.array((235, 235, 225)) * max(light, 0.6)
    image = image * exposure * tint + rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask, weather


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "data/streets")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(COUNT):
        image, mask, weather = scene(rng)
        stem = f"street_{i:04d}"
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
        rows.append({"image": stem, "label": weather})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "dataset.yaml").write_text(
        "name: streets\n"
        "images: images\n"
        "tasks:\n"
        "  - {name: weather, kind: classification, file: labels.csv,\n"
        "     classes: [sunny, overcast, night]}\n"
        "  - {name: markings, kind: segmentation, folder: masks, classes: [background, marking]}\n")
    print(f"wrote {COUNT} images with weather labels and markings masks to {root}/")
    # Read back as policysearch reads it: the starter space names both tasks with their kinds.
    import policysearch as ps

    starter = ps.init(f"folder:{root}")
    assert "weather (classification), markings (segmentation)" in starter, starter
    print("folder dataset OK")


if __name__ == "__main__":
    main()
