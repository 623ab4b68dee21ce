"""One way of counting generations and epochs, in every message. Torch-free.

Generations and epochs are numbered from 0, as the files are (`gen_0/`, `epoch_0.state`, the
results CSV's Generation column, TensorBoard's steps), and a message adds the ordinal in words
so that it cannot be misread: `generation 0 (1 of 3), epoch 4 (5 of 8)`. A stopped run names its
position as `... after batch B` (B batches of that epoch done); its resume names the same one.
"""


def generation(g: int, total: int) -> str:
    """`generation 0 (1 of 3)`."""
    return f"generation {g} ({g + 1} of {total})"


def epoch(e: int, total: int) -> str:
    """`epoch 4 (5 of 8)`."""
    return f"epoch {e} ({e + 1} of {total})"


def position(g: int, generations: int, e: int, epochs: int, batch: int | None = None) -> str:
    """`generation 1 (2 of 3), epoch 3 (4 of 8)`, and `, after batch 5` for a stop mid-epoch."""
    text = f"{generation(g, generations)}, {epoch(e, epochs)}"
    return text + (f", after batch {batch}" if batch else "")


def resume_point(g: int, generations: int, next_epoch: int, next_batch: int, epochs: int) -> str:
    """Where a saved state continues: the position its stop was named by (mid-epoch), or the
    start of the next epoch."""
    if next_batch:
        return position(g, generations, next_epoch, epochs, next_batch)
    if next_epoch >= epochs:
        return f"{generation(g, generations)}, after its last epoch"
    return f"{generation(g, generations)}, start of {epoch(next_epoch, epochs)}"
