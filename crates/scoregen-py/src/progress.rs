//! Progress bars in Python: the library's own bars (`scoregen_core::progress`)
//! drawn by tqdm (`tqdm.auto`, so a notebook gets its widget) when it is
//! installed; quiet otherwise (python/scoregen/_progress.py decides).

use pyo3::prelude::*;
use scoregen::progress::{Bars, Watch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the bars are redrawn.
const EVERY: Duration = Duration::from_millis(100);

/// Runs `work` with the GIL released; with `progress_bar` (None: tqdm when
/// installed and the output is a notebook or a terminal; True: tqdm, or an
/// error without it; False: none) every bar the library makes meanwhile is
/// mirrored by a tqdm bar, updated from a second thread.
pub fn with_bars<T: Send>(py: Python<'_>, progress_bar: Option<bool>, work: impl FnOnce() -> T + Send) -> PyResult<T> {
    let make: Option<Py<PyAny>> = {
        let f = py.import("scoregen._progress")?.call_method1("factory", (progress_bar,))?;
        (!f.is_none()).then(|| f.unbind())
    };
    let Some(make) = make else {
        return Ok(py.allow_threads(work));
    };
    let (result, drawn) = py.allow_threads(move || {
        let (watch, bars) = Watch::enter();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let drawer = s.spawn(|| -> PyResult<()> {
                let mut shown = Shown::default();
                loop {
                    let last = done.load(Ordering::SeqCst);
                    Python::with_gil(|py| shown.update(py, &make, &bars, last))?;
                    if last {
                        return Ok(());
                    }
                    std::thread::sleep(EVERY);
                }
            });
            let r = work();
            done.store(true, Ordering::SeqCst);
            drop(watch);
            (r, drawer.join().expect("the progress thread does not panic"))
        })
    });
    drawn?;
    Ok(result)
}

/// The tqdm bars made so far, one per library bar, and how far each was moved.
#[derive(Default)]
struct Shown {
    bars: Vec<(Py<PyAny>, u64)>,
}

impl Shown {
    fn update(&mut self, py: Python<'_>, make: &Py<PyAny>, bars: &Bars, last: bool) -> PyResult<()> {
        let list = bars.list();
        for (i, pb) in list.iter().enumerate() {
            if i == self.bars.len() {
                // a new loop began: the previous bars are done
                for (b, _) in &self.bars {
                    b.bind(py).call_method0("close")?;
                }
                let bar = make.bind(py).call1((pb.length(), pb.prefix()))?;
                self.bars.push((bar.unbind(), 0));
            }
            let (bar, moved) = &mut self.bars[i];
            let pos = pb.position();
            if pos > *moved {
                bar.bind(py).call_method1("update", (pos - *moved,))?;
                *moved = pos;
            }
        }
        if last {
            for (b, _) in &self.bars {
                b.bind(py).call_method0("close")?;
            }
        }
        Ok(())
    }
}
