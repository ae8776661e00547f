"""Progress bars for the library's loops (training, sampling, inpainting,
the classifier): tqdm's, when it is installed (``tqdm.auto``: a widget in
Jupyter, text in a terminal). The native half (src/progress.rs) calls
:func:`factory` once per call and then ``make(total, desc)`` for each loop."""

import sys


def _interactive() -> bool:
    """A notebook kernel or a terminal on stderr: where the command line would draw a bar."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def factory(progress_bar):
    """``make(total, desc) -> bar`` (a tqdm bar with ``update(n)`` and
    ``close()``) or None for no bars. ``progress_bar``: None shows bars when
    tqdm is installed and the output is a notebook or a terminal, True always
    (an error without tqdm), False never."""
    if progress_bar is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress_bar:
            raise ImportError("progress_bar=True needs tqdm (pip install tqdm)") from None
        return None
    if progress_bar is None and not _interactive():
        return None
    return lambda total, desc: tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
