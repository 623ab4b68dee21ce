"""Whole batches built at once, straight into one buffer (in a loader worker, a shared one).

The DataLoader fetches a batch from a dataset that has `__getitems__(keys)` in one call (the
batch sampler's keys handed to the dataset) and passes what it returns to the loader's
`collate_fn`. The cached datasets (data.cache.CachedImages, through data.samplers.SeededSamples)
answer with a `BuiltBatch`: every tensor of the batch (pixels, targets and, for
--batched_crops, the crop boxes and flips) is a view of one storage: in a worker one of its
reused shared-memory buffers, which the training process reads the batch from (on the CPU in
place, with CUDA through a copy into page-locked memory: `_Ring`, `_copy_out`). Per sample,
the collate path fetches each item, stacks them into a new shared batch and sends the targets
in a second one; here each image is written once, into its place, and the
batch crosses to the training process as one buffer. The draws of each item are those of its
`__getitem__`, so the batches are the same bits either way.

`collate` is the loader's collate_fn: a BuiltBatch becomes its batch; a list of items (a dataset
that builds no batches) goes to the usual collate.
"""
import os
import weakref
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import default_collate, get_worker_info

ALIGN = 64          # bytes: where each tensor of a batch starts in its buffer


class BuiltBatch:
    """What `__getitems__` returns: the tensors of one `batch_buffers` call (contiguous) and
    `assemble(tensors, *extra)`, a module-level function that makes the batch the loader hands
    out of them (e.g. (images, targets))."""

    def __init__(self, tensors: Sequence[torch.Tensor], assemble: Callable, *extra):
        self.tensors, self.assemble, self.extra = tuple(tensors), assemble, extra

    def batch(self):
        return self.assemble(self.tensors, *self.extra)


class _Sent:
    """A BuiltBatch on its way from a worker: unpickled, it is the batch, read from the worker's
    buffer (`_copy_out`)."""

    def __init__(self, built: BuiltBatch):
        self.built = built

    def __reduce__(self):
        built = self.built
        return _assemble, (built.assemble, SlotTensors(built.tensors), built.extra)


def _assemble(assemble, tensors, extra):
    return assemble(tensors, *extra)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def batch_buffers(*specs: tuple[Sequence[int], torch.dtype]) -> list[torch.Tensor]:
    """Uninitialised tensors of the given (shape, dtype), all views of one storage: inside a
    loader worker one of the worker's reused shared buffers (see `_Ring`), in ordinary memory
    otherwise. Return them in a BuiltBatch."""
    offsets, total = [], HEADER
    for shape, dtype in specs:
        offsets.append(total)
        total = _aligned(total + _numel(shape) * _itemsize(dtype))
    storage = _RING.storage(total) if get_worker_info() is not None else torch.UntypedStorage(total)
    return _views(storage, specs, offsets)


def _numel(shape) -> int:
    numel = 1
    for size in shape:
        numel *= int(size)
    return numel


def _itemsize(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _views(storage, specs, offsets) -> list[torch.Tensor]:
    tensors = []
    for (shape, dtype), offset in zip(specs, offsets, strict=True):
        shape = tuple(int(s) for s in shape)
        strides, stride = [], 1
        for size in reversed(shape):
            strides.insert(0, stride)
            stride *= size
        tensors.append(torch.empty(0, dtype=dtype).set_(storage, offset // _itemsize(dtype), shape,
                                                        tuple(strides)))
    return tensors


# A worker writes its batches into shared buffers that it reuses: new shared memory costs a page
# fault per 4 kB page on its first write (on a busy virtual machine, ~3 us each: 0.6 ms for an
# 800 kB uncropped image, more than the copy), which a reused buffer has paid already. The
# training process clears the buffer's first byte, which the worker set when it filled it, once
# it is done with the batch (`_copy_out`): with CUDA as soon as the batch is copied into
# page-locked memory (the copy pin_memory would make anyway), on the CPU when the last tensor
# sharing the buffer's memory is released. A buffer is reused only once that byte is clear, so
# a batch still in use is never written over, whatever the loader's prefetching or ordering; a
# worker makes another buffer when none is free (at least 3 with this toolkit's
# prefetch_factor 2).
HEADER = ALIGN      # bytes before a buffer's first tensor; byte 0: 1 from filled to released


class _Ring:
    def __init__(self):
        self.slots: list[torch.UntypedStorage] = []

    def storage(self, nbytes: int) -> torch.UntypedStorage:
        free = [k for k, slot in enumerate(self.slots) if slot[0] == 0]
        fitting = [k for k in free if self.slots[k].nbytes() >= nbytes]
        if fitting:
            slot = self.slots[fitting[0]]
        else:
            slot = torch.UntypedStorage._new_shared(nbytes)
            if free:                         # a free buffer too small for this batch: replaced
                self.slots[free[0]] = slot
            else:
                self.slots.append(slot)
        slot[0] = 1
        return slot


_RING = _Ring()
_RECEIVED = {}      # training process: each buffer as a numpy array, kept mapped (id -> array)


def _copy_out(storage, key, specs, offsets):
    """In the receiving process: the batch's tensors. With CUDA they are copied into page-locked
    memory (the copy pin_memory would make) and the buffer is marked free at once. On the CPU
    they are views of the buffer itself, which is marked free when the last tensor sharing its
    memory is released (`_lent`)."""
    if key not in _RECEIVED:      # mapped once per buffer, not once per batch
        _RECEIVED[key] = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
    if len(_RECEIVED) > 64:       # the buffers of workers gone (loaders of earlier runs)
        del _RECEIVED[next(iter(_RECEIVED))]
    buffer = _RECEIVED[key]
    if not torch.cuda.is_available():
        return tuple(_views(_lent(buffer), specs, offsets))
    tensors = tuple(torch.empty_like(view, pin_memory=True).copy_(view)
                    for view in _views(storage, specs, offsets))
    buffer[0] = 0
    return tensors


def _lent(buffer):
    """A storage over `buffer`'s memory that holds a fresh numpy view of it: every tensor made
    from the storage, and every alias of those (views, detach, a no-op .to), keeps that view
    alive, and the buffer is marked free (byte 0 cleared) when the last of them is released."""
    view = buffer.view()
    weakref.finalize(view, _mark_free, buffer)
    return torch.frombuffer(view, dtype=torch.uint8).untyped_storage()


def _mark_free(buffer):
    buffer[0] = 0


class SlotTensors:
    """Tensors that are views of one of a worker's buffers, sent as that buffer (shared memory,
    mapped once by the training process) and rebuilt there (`_copy_out`)."""

    def __init__(self, tensors):
        self.tensors = tuple(tensors)

    def __reduce__(self):
        storage = self.tensors[0].untyped_storage()
        specs = [(tuple(t.shape), t.dtype) for t in self.tensors]
        offsets = [t.storage_offset() * t.element_size() for t in self.tensors]
        key = (os.getpid(), storage.data_ptr())
        return _copy_out, (storage, key, specs, offsets)


def collate_with(fallback: Callable) -> Callable:
    """The loader's collate_fn: BuiltBatch as it is, else `fallback(items)`."""
    if fallback is default_collate or fallback is None:
        return collate
    return _COLLATES.setdefault(fallback, _Collate(fallback))


def collate(data):
    """A BuiltBatch as its batch (in a worker: to be copied out of the worker's buffer where it
    is received); a list of items through torch's default_collate."""
    if isinstance(data, BuiltBatch):
        return _send(data)
    return default_collate(data)


def _send(built: BuiltBatch):
    return built.batch() if get_worker_info() is None else _Sent(built)


class _Collate:
    """collate with another fallback (picklable for spawned workers)."""

    def __init__(self, fallback: Callable):
        self.fallback = fallback

    def __call__(self, data):
        if isinstance(data, BuiltBatch):
            return _send(data)
        return self.fallback(data)


_COLLATES = {}
