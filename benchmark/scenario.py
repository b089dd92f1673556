"""Task sequences: the splits, the tasks built from them, and which images the importances are computed on.

MNIST's 60k training images are split by index: images 0 .. train_images-1 are trained on; the last
validation_images images (55000–59999 in the paper protocol) are the validation split, and the first
importance_samples of those are the importance samples. The paper's author trains on all 60k and takes the last
5000 training images, trained on, as importance samples: importance_from = "train" (the author protocol, without
a validation split). The 10k test images give the reported accuracies. Pixels are scaled to [0, 1] (/255).

Task 0 is MNIST itself; task t ≥ 1 shows every image with its pixels reordered by permutations[t]:
permuted_image[k] = image[permutations[t][k]]. The permutations are drawn once from the run's seed (never per
data-loader worker) and stored with the run, so that every driver with the same seed sees the same tasks.

The other kinds of sequence (data.sequence; README, "Models and task sequences") keep the same splits of each
dataset they use and build task t from them (ImageTasks): `rotated` rotates every image by task t's angle,
`split` keeps the images of task t's pair of classes (split-MNIST), `sequence` takes a list of datasets, each
optionally rotated (the author's MNIST → Fashion-MNIST → MNIST rotated 90° → Fashion-MNIST rotated 90°).

Split tasks come in van de Ven et al.'s three incremental-learning types ("Three types of incremental learning",
Nature Machine Intelligence 2022), data.split_type; a head is the set of output units the softmax runs over
(evaluation.task_head masks the others' logits to −∞), for the loss, the prediction and every importance alike:
    task    task t's own head, its classes 2t and 2t+1, in training and whenever task t is evaluated
    domain  one head of 2 units for every task, units 0 and 1; the label is the digit mod 2 (even or odd)
    class   one head over every class seen so far: classes 0 … 2t+1 while task t trains; after task i every
            task is evaluated over classes 0 … 2i+1 (van de Ven et al.'s choice in training; their code
            evaluates over all ten units, the same set once all five pairs have been seen)

The task-sequence protocol, what the training loop asks of a sequence (PermutedMNIST and ImageTasks follow it):
    tasks                 how many tasks
    split(name, t)        (inputs [N, 784] float, labels [N] int64) of split name ("train", "validation",
                          "importance", "test") for task t; the importance samples are the model's data for
                          task t's importances
    classes(t)            the output units task t is trained and its importances computed on (its head), or
                          None for all of them
    evaluation_classes(t, i)   optional: the output units task t is evaluated on after training task i; without
                          it, classes(t) (evaluation_head)
    record()              {artifact name: array or JSON-able dict}: what a run stores to recompute the sequence
    importance_indices    positions in the training set of the importance samples (importance_samples.npy)
    device                where the tensors live
"""

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from benchmark import plugins
from benchmark.config import DATASET_NAMES, IMAGE_SIDE, MNIST_TRAIN_IMAGES, SPLIT_CLASSES_PER_TASK, DataConfig
from benchmark.errors import UsageError, first_line

PIXELS = 28 * 28


@dataclass(frozen=True)
class Split:
    x: Tensor  # [N, 784] float32 in [0, 1], unpermuted
    y: Tensor  # [N] int64
    indices: np.ndarray  # positions in the MNIST set (train or test) the images came from


@dataclass(frozen=True)
class Splits:
    train: Split
    validation: Split  # empty in a protocol without one (author)
    importance: Split  # the first importance_samples validation images, or the last training images
    test: Split


@dataclass(frozen=True)
class PermutedMNIST:
    splits: Splits  # the same images for every seed; only the permutations depend on it
    permutations: np.ndarray  # [tasks, 784] int64; row 0 is the identity

    @property
    def train(self) -> Split:
        return self.splits.train

    @property
    def validation(self) -> Split:
        return self.splits.validation

    @property
    def importance(self) -> Split:
        return self.splits.importance

    @property
    def test(self) -> Split:
        return self.splits.test

    @property
    def tasks(self) -> int:
        return len(self.permutations)

    def inputs(self, split: Split, task: int) -> Tensor:
        return split.x[:, torch.from_numpy(self.permutations[task]).to(split.x.device)]

    def split(self, name: str, task: int) -> tuple[Tensor, Tensor]:
        s = getattr(self.splits, name)
        return self.inputs(s, task), s.y

    def classes(self, task: int) -> Tensor | None:
        return None

    def record(self) -> dict[str, object]:
        return {"permutations.npy": self.permutations}

    @property
    def importance_indices(self) -> np.ndarray:
        return self.importance.indices

    @property
    def device(self) -> torch.device:
        return self.train.x.device


class TaskSequence(Protocol):
    """The task-sequence protocol (module docstring)."""

    tasks: int

    def split(self, name: str, task: int) -> tuple[Tensor, Tensor]: ...

    def classes(self, task: int) -> Tensor | None: ...

    def record(self) -> dict[str, object]: ...

    @property
    def importance_indices(self) -> np.ndarray: ...

    @property
    def device(self) -> torch.device: ...


@dataclass(frozen=True)
class ImageTasks:
    """Task t: the images of dataset datasets[t], rotated by angles[t] degrees, restricted to class_sets[t] (all
    classes where class_sets is None): rotated, split and sequence. split_type: the heads and labels of split
    tasks (module docstring)."""

    kind: str
    data: Mapping[str, Splits]  # by dataset name: the same image indices in each
    datasets: tuple[str, ...]
    angles: tuple[float, ...]
    class_sets: tuple[tuple[int, ...], ...] | None = None
    split_type: str = "task"

    @property
    def tasks(self) -> int:
        return len(self.datasets)

    def split(self, name: str, task: int) -> tuple[Tensor, Tensor]:
        s = getattr(self.data[self.datasets[task]], name)
        x, y = s.x, s.y
        if self.class_sets is not None:
            keep = torch.isin(y, torch.tensor(self.class_sets[task], device=y.device))
            x, y = x[keep], y[keep]
        if self.split_type == "domain":
            y = y % SPLIT_CLASSES_PER_TASK  # the digit's position in its pair: even 0, odd 1
        return rotate(x, self.angles[task]), y

    def classes(self, task: int) -> Tensor | None:
        if self.class_sets is None:
            return None
        head = {"task": self.class_sets[task], "domain": tuple(range(SPLIT_CLASSES_PER_TASK)),
                "class": tuple(c for pair in self.class_sets[:task + 1] for c in pair)}[self.split_type]
        return torch.tensor(head, device=self.device)

    def evaluation_classes(self, task: int, trained: int) -> Tensor | None:
        """Class-incremental: every task over the classes seen up to the task trained last; otherwise the task's
        own head."""
        return self.classes(trained if self.split_type == "class" else task)

    def record(self) -> dict[str, object]:
        # split_type only where it is not "task": task-incremental runs store what they stored before it existed
        return {"task_sequence.json": {"kind": self.kind, "tasks": [
            {"dataset": d, "angle": a, "classes": list(self.class_sets[t]) if self.class_sets else None}
            for t, (d, a) in enumerate(zip(self.datasets, self.angles))],
            **({"split_type": self.split_type} if self.split_type != "task" else {})}}

    @property
    def importance_indices(self) -> np.ndarray:
        return next(iter(self.data.values())).importance.indices

    @property
    def device(self) -> torch.device:
        return next(iter(self.data.values())).train.x.device


def evaluation_head(sequence: TaskSequence, task: int, trained: int) -> Tensor | None:
    """The output units task `task` is evaluated on after training task `trained`: the sequence's
    evaluation_classes where it has one (class-incremental split tasks), else the task's own head (classes)."""
    if hasattr(sequence, "evaluation_classes"):
        return sequence.evaluation_classes(task, trained)
    return sequence.classes(task)


def checked_task_sequence(sequence, data: DataConfig) -> TaskSequence:
    """What a data.factory returned, checked against the protocol on its first task: a UsageError naming the
    factory otherwise (the command line makes one before anything is written)."""
    def need(ok: bool, problem: str) -> None:
        if not ok:
            raise UsageError(f"data.factory {data.factory!r}: {problem}")

    members = ("tasks", "split", "classes", "record", "importance_indices", "device")
    missing = [m for m in members if not hasattr(sequence, m)]
    need(not missing, f"returned a {type(sequence).__name__} without {', '.join(missing)} (the TaskSequence protocol)")
    need(sequence.tasks == data.tasks, f"returned {sequence.tasks} tasks, data.tasks says {data.tasks}")
    for name in ("train", "importance", "test"):
        x, y = sequence.split(name, 0)
        need(isinstance(x, Tensor) and x.ndim == 2 and x.shape[1] == PIXELS and x.is_floating_point(),
             f"split({name!r}, 0) must give float images [N, {PIXELS}] first")
        need(isinstance(y, Tensor) and y.shape == (len(x),) and y.dtype == torch.int64,
             f"split({name!r}, 0) must give int64 labels [N] second")
    need(len(sequence.importance_indices) == len(sequence.split("importance", 0)[0]),
         "importance_indices must give one index per importance sample")
    return sequence


def rotate(x: Tensor, angle: float) -> Tensor:
    """Flat images rotated counter-clockwise by angle degrees about their centre: exact (torch.rot90) for
    multiples of 90°, bilinear otherwise, with black corners."""
    if angle % 360 == 0 or not len(x):
        return x
    images = x.view(len(x), 1, IMAGE_SIDE, IMAGE_SIDE)
    if angle % 90 == 0:
        return torch.rot90(images, int(angle // 90) % 4, dims=(2, 3)).reshape(len(x), PIXELS)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional

    return functional.rotate(images, angle, InterpolationMode.BILINEAR).reshape(len(x), PIXELS)


def draw_angles(tasks: int, max_angle: float, seed: int) -> tuple[float, ...]:
    """Task 0 unrotated, the others uniformly in [0, max_angle) from the seed."""
    return (0.0, *np.random.default_rng(seed).uniform(0.0, max_angle, tasks - 1).tolist())


def draw_permutations(tasks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [np.arange(PIXELS)] + [rng.permutation(PIXELS) for _ in range(tasks - 1)]
    return np.stack(rows).astype(np.int64)


# data.dataset → torchvision's dataset class, which is also its folder name
TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


# torchvision's file names in <folder>/raw/: train images, train labels, test images, test labels
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_UNSIGNED_BYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (LeCun's MNIST format, Fashion-MNIST's too): two zero bytes, the type 0x08, the
    number of dimensions, each dimension as a big-endian uint32, then the data. Read here rather than through
    torchvision, whose import alone costs a run's start-up seconds (tests/test_scenario.py checks both agree)."""
    data = path.read_bytes()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UNSIGNED_BYTE:
        raise ValueError(f"{path.name} is not an idx file of unsigned bytes")
    header = 4 + 4 * data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3]))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"{path.name} holds {len(data) - header} bytes of data, its header says {int(np.prod(shape))}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_dataset(data_dir: str | Path, dataset: str = "mnist",
                 download: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images uint8 [60000, 28, 28], train labels int64, test images [10000, 28, 28], test labels) of MNIST
    or Fashion-MNIST.

    Reads torchvision's layout (data_dir/MNIST/raw/*-ubyte, data_dir/FashionMNIST/raw/…); only where the files are
    missing, and download is allowed, torchvision downloads them. Any failure becomes a one-line UsageError that
    says how to provide the files.
    """
    folder, label = TORCHVISION[dataset], DATASET_NAMES[dataset]
    raw = Path(data_dir) / folder / "raw"
    how = (f"put the four {label} idx files in {raw}, or point --data-dir (or BENCHMARK_DATA_DIR) at a folder "
           f"that holds {folder}/raw/")
    if not all((raw / name).is_file() for name in IDX_FILES):
        if not download:
            raise UsageError(f"{label} not found: {how}")
        import torchvision  # only to download: its import takes seconds

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            for train in (True, False):
                getattr(torchvision.datasets, folder)(str(data_dir), train=train, download=True)
        except Exception as e:  # offline, a mirror down, a proxy: torchvision reports each its own way
            raise UsageError(f"{label} not found and not downloadable ({first_line(e)}): {how}") from None
        finally:
            socket.setdefaulttimeout(previous)
    try:
        train_x, train_y, test_x, test_y = (read_idx(raw / name) for name in IDX_FILES)
    except (OSError, ValueError) as e:
        raise UsageError(f"{label} files in {raw} are unreadable ({first_line(e)}): {how}") from None
    image = (IMAGE_SIDE, IMAGE_SIDE)
    if train_x.shape != (MNIST_TRAIN_IMAGES, *image) or test_x.shape != (10000, *image) \
            or train_y.shape != (MNIST_TRAIN_IMAGES,) or test_y.shape != (10000,):
        raise UsageError(f"{label} files under {data_dir} have unexpected sizes: {how}")
    return (torch.from_numpy(train_x.copy()), torch.from_numpy(train_y.astype(np.int64)),
            torch.from_numpy(test_x.copy()), torch.from_numpy(test_y.astype(np.int64)))


def make_splits(data: DataConfig, mnist, device: str | torch.device = "cpu") -> Splits:
    train_images, train_labels, test_images, test_labels = mnist

    def split(images, labels, indices: np.ndarray) -> Split:
        idx = torch.from_numpy(indices)
        x = images[idx].reshape(len(indices), PIXELS).to(device=device, dtype=torch.float32).div_(255.0)
        return Split(x=x, y=labels[idx].to(device=device, dtype=torch.int64), indices=indices)

    train = np.arange(data.train_images)
    validation = np.arange(MNIST_TRAIN_IMAGES - data.validation_images, MNIST_TRAIN_IMAGES)
    importance = validation[: data.importance_samples] if data.importance_from == "validation" \
        else train[len(train) - data.importance_samples:]
    return Splits(
        train=split(train_images, train_labels, train),
        validation=split(train_images, train_labels, validation),
        importance=split(train_images, train_labels, importance),
        test=split(test_images, test_labels, np.arange(data.test_images)),
    )


def make_scenario(splits: Splits, tasks: int, seed: int) -> PermutedMNIST:
    return PermutedMNIST(splits=splits, permutations=draw_permutations(tasks, seed))


def datasets_needed(data: DataConfig) -> tuple[str, ...]:
    """The datasets a protocol's task sequence reads, each once (a factory's: data.dataset and data.datasets)."""
    if data.factory:
        return tuple(dict.fromkeys((data.dataset, *data.datasets)))
    return tuple(dict.fromkeys(data.datasets)) if data.sequence == "sequence" else (data.dataset,)


def load_splits(data: DataConfig, data_dir: str, download: bool, device: str | torch.device) -> dict[str, Splits]:
    """Every dataset the protocol's task sequence reads, split as the protocol says: {dataset name: splits}."""
    return {name: make_splits(data, load_dataset(data_dir, name, download=download), device)
            for name in datasets_needed(data)}


def make_task_sequence(data: DataConfig, splits: Mapping[str, Splits], seed: int) -> PermutedMNIST | ImageTasks:
    """The protocol's task sequence for this seed; splits: by dataset name, those datasets_needed names."""
    tasks = data.tasks
    if data.factory:
        return checked_task_sequence(plugins.function(data.factory, "data.factory")(data, splits, seed), data)
    if data.sequence == "permuted":
        return make_scenario(splits[data.dataset], tasks, seed if data.permutation_seed < 0 else data.permutation_seed)
    if data.sequence == "rotated":
        angles = data.angles or draw_angles(tasks, data.max_angle, seed)
        return ImageTasks("rotated", splits, (data.dataset,) * tasks, tuple(angles))
    if data.sequence == "split":
        pairs = tuple(tuple(range(t * SPLIT_CLASSES_PER_TASK, (t + 1) * SPLIT_CLASSES_PER_TASK)) for t in range(tasks))
        return ImageTasks("split", splits, (data.dataset,) * tasks, (0.0,) * tasks, pairs, data.split_type)
    return ImageTasks("sequence", splits, data.datasets, data.rotations or (0.0,) * tasks)
