"""The seeded shuffle of an input's record stream: which loaders get one, its settings, and how it is applied.

A hub input (and a local json/parquet input that asks for it with `loader.shuffle`) is read through
`IterableDataset.shuffle(seed=..., buffer_size=...)` (datasets 5.2.0, `datasets/iterable_dataset.py`
`IterableDataset.shuffle`): the order of the data files (shards) is shuffled with the seed, up to 10 shards feed the
buffer at a time (`max_buffer_input_shards`), and records come out of a `buffer_size` buffer drawn with the same
seed. So the first documents of Wikipedia are not its first pages in page-id order, and the same seed gives the
same stream on every machine. `loader.shuffle`: `{"seed": int, "buffer_size": int}`, or `null` for storage order;
default for `hf` loaders: DEFAULT_SHUFFLE. The buffer holds `buffer_size` raw records in memory (TriviaQA rc
records are ~90 kB each, hence its smaller buffer in the definitions). The settings are part of the fetch stamp
(data/stamps.py); what a resumed shuffled stream loses is in data/input_loaders.py.
"""

from __future__ import annotations

DEFAULT_SHUFFLE = {"seed": 1234, "buffer_size": 10_000}


def shuffle_settings(loader: dict) -> dict | None:
    """The shuffle this loader's stream gets: its `shuffle` key (None = storage order), else the default for hub
    loaders; local files keep their order unless asked."""
    if "shuffle" in loader:
        return loader["shuffle"]
    return dict(DEFAULT_SHUFFLE) if loader.get("type") == "hf" else None


def check_shuffle(where: str, value) -> None:
    """ValueError naming the input when `loader.shuffle` is neither null nor {"seed": int, "buffer_size": int >= 1}."""
    if value is None:
        return
    if (not isinstance(value, dict) or set(value) != {"seed", "buffer_size"}
            or not all(isinstance(value[k], int) and not isinstance(value[k], bool) for k in value)
            or value["buffer_size"] < 1 or value["seed"] < 0):
        raise ValueError(f"{where}: loader.shuffle {value!r}; use null (storage order) or "
                         f'{{"seed": 1234, "buffer_size": 10000}} (integers, buffer_size >= 1)')


def shuffled(dataset, loader: dict):
    """The dataset through `IterableDataset.shuffle(seed, buffer_size)` when its loader asks for a shuffle."""
    s = shuffle_settings(loader)
    return dataset if s is None else dataset.shuffle(seed=s["seed"], buffer_size=s["buffer_size"])
