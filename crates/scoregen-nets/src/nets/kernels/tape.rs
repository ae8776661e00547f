//! A reverse pass of our own for a frozen network's input gradient: the
//! vector–Jacobian product Jᵀv = ∇ₓ⟨v, f(x)⟩ that a likelihood's divergence
//! needs at every step.
//!
//! candle's `backward` is exact, but it starts every gradient as a
//! zero-filled tensor and adds each contribution into it
//! (`GradStore::or_insert`, then `add`): two passes over memory and an
//! allocation for every op of the network, the zero fill on one thread. For
//! the digits U-Net's 28×28 likelihood at 32 images that was 14 % of the time
//! on two threads. Its graph and `GradStore` are private, so here the ops
//! are recorded as they run ([`record`]) and run backward in reverse order
//! ([`Tape::input_grad`]): each op's own `bwd`, the same function candle's
//! backward would call, with a gradient moved (not added) into place when it
//! is a tensor's only one, and added only where a tensor feeds several ops.
//!
//! Every op that [`apply1`], [`apply2`] and [`apply3`] apply inside
//! [`record`] is recorded, with the same op instance (the state its forward
//! kept for the backward is inside it). An op that is not recorded (a
//! candle op on a tracked tensor) would cut the chain of gradients, so
//! [`record`] checks that each tracked input of a recorded op is the
//! network's input or a recorded op's output; where one is not, the
//! gradient comes from candle's backward of the same graph instead, exact
//! all the same. First order only, like the fused kernels themselves.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, TensorId, Var};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

type Op1 = Arc<Box<dyn CustomOp1 + Send + Sync>>;
type Op2 = Arc<Box<dyn CustomOp2 + Send + Sync>>;
type Op3 = Arc<Box<dyn CustomOp3 + Send + Sync>>;

/// One recorded op: the op, its arguments and its output.
enum Entry {
    One(Op1, Tensor, Tensor),
    Two(Op2, [Tensor; 2], Tensor),
    Three(Op3, [Tensor; 3], Tensor),
}

impl Entry {
    fn output(&self) -> &Tensor {
        match self {
            Entry::One(_, _, y) | Entry::Two(_, _, y) | Entry::Three(_, _, y) => y,
        }
    }

    fn args(&self) -> Vec<&Tensor> {
        match self {
            Entry::One(_, a, _) => vec![a],
            Entry::Two(_, a, _) => a.iter().collect(),
            Entry::Three(_, a, _) => a.iter().collect(),
        }
    }

    /// The op's own backward: (argument, its gradient) for each argument.
    fn backward(&self, dy: &Tensor) -> Result<Vec<(&Tensor, Option<Tensor>)>> {
        Ok(match self {
            Entry::One(op, a, y) => vec![(a, op.bwd(a, y, dy)?)],
            Entry::Two(op, [a, b], y) => {
                let (da, db) = op.bwd(a, b, y, dy)?;
                vec![(a, da), (b, db)]
            }
            Entry::Three(op, [a, b, c], y) => {
                let (da, db, dc) = op.bwd(a, b, c, y, dy)?;
                vec![(a, da), (b, db), (c, dc)]
            }
        })
    }
}

/// The ops a network's forward ran, in order, with its tracked input.
pub(crate) struct Tape {
    input: Tensor,
    entries: Vec<Entry>,
}

thread_local! {
    /// The entries of the [`record`] running on this thread.
    static RECORDING: RefCell<Option<Vec<Entry>>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Tapes [`record`] made on this thread: (complete, falling back to candle).
    static MADE: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
    /// Networks use candle's backward instead ([`without_tape`]).
    static OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a frozen network's forward on x should run inside [`record`]:
/// x is tracked (an input gradient will be asked for), f32, on a device
/// where the fused kernels run, and the tape is on (always, but inside the
/// tests' [`without_tape`]).
pub(crate) fn wanted(x: &Tensor) -> bool {
    #[cfg(test)]
    if OFF.with(|o| o.get()) {
        return false;
    }
    x.track_op() && x.dtype() == candle_core::DType::F32 && scoregen_core::autodiff::fused_kernels_allowed(x.device())
}

/// Runs `f` with networks on candle's backward, to hold the tape to it.
#[cfg(test)]
pub(crate) fn without_tape<R>(f: impl FnOnce() -> R) -> R {
    OFF.with(|o| o.set(true));
    let r = f();
    OFF.with(|o| o.set(false));
    r
}

/// The tapes [`record`] made on this thread so far: (complete, incomplete).
#[cfg(test)]
pub(crate) fn made() -> (usize, usize) {
    MADE.with(|m| m.get())
}

/// Pushes `entry` when a [`record`] runs on this thread and the op's output
/// depends on a tracked tensor (constants need no gradient).
fn push(entry: Entry) {
    if entry.output().track_op() {
        RECORDING.with(|r| {
            if let Some(entries) = r.borrow_mut().as_mut() {
                entries.push(entry);
            }
        });
    }
}

/// `x.apply_op1(op)`, recorded inside [`record`].
pub(crate) fn apply1(x: &Tensor, op: impl CustomOp1 + Send + Sync + 'static) -> Result<Tensor> {
    let op: Op1 = Arc::new(Box::new(op));
    let y = x.apply_op1_arc(op.clone())?;
    push(Entry::One(op, x.clone(), y.clone()));
    Ok(y)
}

/// `x.apply_op2(b, op)`, recorded inside [`record`].
pub(crate) fn apply2(x: &Tensor, b: &Tensor, op: impl CustomOp2 + Send + Sync + 'static) -> Result<Tensor> {
    let op: Op2 = Arc::new(Box::new(op));
    let y = x.apply_op2_arc(b, op.clone())?;
    push(Entry::Two(op, [x.clone(), b.clone()], y.clone()));
    Ok(y)
}

/// `x.apply_op3(b, c, op)`, recorded inside [`record`].
pub(crate) fn apply3(x: &Tensor, b: &Tensor, c: &Tensor, op: impl CustomOp3 + Send + Sync + 'static) -> Result<Tensor> {
    let op: Op3 = Arc::new(Box::new(op));
    let y = x.apply_op3_arc(b, c, op.clone())?;
    push(Entry::Three(op, [x.clone(), b.clone(), c.clone()], y.clone()));
    Ok(y)
}

/// f(x) for a tracked x, with its input gradient by the [`Tape`] of f's ops.
///
/// f runs on a tracked copy of x with its ops recorded; the result is one
/// op on x whose backward runs that tape (or, where f ran an op the tape
/// does not record, candle's backward of f's graph). Nested calls record
/// separately.
pub(crate) fn record(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let input = Var::from_tensor(&x.detach())?.as_tensor().clone();
    let outer = RECORDING.with(|r| r.borrow_mut().replace(Vec::new()));
    let output = f(&input);
    let entries = RECORDING.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer)).unwrap_or_default();
    let output = output?;
    let tape = Tape { input: input.clone(), entries };
    let tape = tape.complete(&output).then_some(tape);
    #[cfg(test)]
    MADE.with(|m| {
        let (done, fallback) = m.get();
        m.set(if tape.is_some() { (done + 1, fallback) } else { (done, fallback + 1) })
    });
    x.apply_op1_arc(Arc::new(Box::new(Recorded { input, output, tape })))
}

impl Tape {
    /// True when every tracked argument of a recorded op is the input or a
    /// recorded op's output, and `output` is one: the gradients' chain from
    /// `output` back to the input is whole.
    fn complete(&self, output: &Tensor) -> bool {
        let mut made: HashSet<TensorId> = HashSet::from([self.input.id()]);
        for e in &self.entries {
            if e.args().iter().any(|a| a.track_op() && !made.contains(&a.id())) {
                return false;
            }
            made.insert(e.output().id());
        }
        made.contains(&output.id())
    }

    /// ∇ₓ⟨dy, output⟩ by the recorded ops' backward passes in reverse order
    /// (the recording order is topological). A tensor's gradient is the sum
    /// of what the ops that read it send back; the first is moved in, later
    /// ones added.
    fn input_grad(&self, output: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let mut grads: HashMap<TensorId, Tensor> = HashMap::from([(output.id(), dy.clone())]);
        let detach = scoregen_core::autodiff::backward_detaches();
        for e in self.entries.iter().rev() {
            let Some(g) = grads.remove(&e.output().id()) else { continue };
            // as candle's backward does on this thread: a gradient computed from
            // a tracked argument holds its own gradient's graph, and so on back
            // to the output, which would keep every gradient of the pass alive
            let g = if detach { g.detach() } else { g };
            for (arg, da) in e.backward(&g)? {
                let Some(da) = da.filter(|_| arg.track_op()) else { continue };
                let sum = match grads.remove(&arg.id()) {
                    Some(prev) => (prev + da)?,
                    None => da,
                };
                grads.insert(arg.id(), sum);
            }
        }
        match grads.remove(&self.input.id()) {
            Some(g) => Ok(g),
            None => self.input.zeros_like(),
        }
    }
}

/// The op [`record`] returns: y = f(x), its backward the tape's.
struct Recorded {
    /// The tracked copy of x that f ran on.
    input: Tensor,
    /// f of it.
    output: Tensor,
    /// The ops f ran, when the tape is complete ([`Tape::complete`]).
    tape: Option<Tape>,
}

impl CustomOp1 for Recorded {
    fn name(&self) -> &'static str {
        "recorded-network"
    }

    /// A copy of f's output (f ran before; the op only attaches it to x).
    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        let output = self.output.contiguous()?;
        let (storage, layout) = output.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("a recorded network runs on the CPU only")
        };
        let values = super::fused::slice::<f32>(cpu, layout)?.to_vec();
        Ok((CpuStorage::F32(values), output.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = match &self.tape {
            Some(tape) => tape.input_grad(&self.output, dy)?,
            None => {
                let grads = (&self.output * dy)?.sum_all()?.backward()?;
                match grads.get(&self.input) {
                    Some(g) => g.clone(),
                    None => self.input.zeros_like()?,
                }
            }
        };
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::kernels::fused::{cat_channels, upsample2};
    use candle_core::Device;

    fn input() -> Var {
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &Device::Cpu).unwrap()).unwrap()
    }

    fn grad_of(y: &Tensor, dy: &Tensor, x: &Var) -> Vec<f32> {
        let grads = (y * dy).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Twice ×2 upsampling: the tape runs each op's backward (a 2×2 sum) in
    /// turn, so ∂⟨1, y⟩/∂x = 16 exactly; x's copy is what the ops saw. (With
    /// SCOREGEN_FUSED=0 upsampling is candle's ops, unrecorded: the tape
    /// falls back, with the same gradient.)
    #[test]
    fn a_chain_of_recorded_ops_gives_the_exact_input_gradient() {
        let x = input();
        let before = made();
        let y = record(x.as_tensor(), |x| upsample2(&upsample2(x)?)).unwrap();
        let expected = if scoregen_core::autodiff::cpu_ops_allowed(&Device::Cpu) {
            (before.0 + 1, before.1)
        } else {
            (before.0, before.1 + 1)
        };
        assert_eq!(made(), expected, "a whole chain of CPU ops makes a complete tape");
        assert_eq!(y.dims(), [2, 3, 16, 16]);
        let reference = upsample2(&upsample2(x.as_tensor()).unwrap()).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            reference.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let dx = grad_of(&y, &y.ones_like().unwrap(), &x);
        assert!(dx.iter().all(|&g| g == 16.0), "{dx:?}");
    }

    /// A tensor read by two ops gets the sum of both gradients: y = [x, x]
    /// along the channels gives dx = dy₁ + dy₂.
    #[test]
    fn a_tensor_read_twice_gets_both_gradients() {
        let x = input();
        let y = record(x.as_tensor(), |x| cat_channels(x, x)).unwrap();
        let dy = Tensor::randn(0f32, 1.0, y.shape(), &Device::Cpu).unwrap();
        let expected = (dy.narrow(1, 0, 3).unwrap() + dy.narrow(1, 3, 3).unwrap()).unwrap();
        assert_eq!(grad_of(&y, &dy, &x), expected.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    /// An op the tape does not record (candle's affine here) would cut the
    /// gradient's chain: the tape is found incomplete and candle's backward
    /// gives the gradient instead, 4·3 = 12 per entry.
    #[test]
    fn an_unrecorded_op_falls_back_to_candles_backward() {
        let x = input();
        let before = made();
        let y = record(x.as_tensor(), |x| upsample2(&x.affine(3.0, 1.0)?)).unwrap();
        assert_eq!(made(), (before.0, before.1 + 1), "the affine map is not recorded");
        let dx = grad_of(&y, &y.ones_like().unwrap(), &x);
        assert!(dx.iter().all(|&g| g == 12.0), "{dx:?}");
    }
}
