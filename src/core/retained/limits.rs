//! Keeping a retained state within its limits while it changes: its size as compact JSON text and
//! its depth, measured without recursion and with an early exit, and changes checked before they
//! are made. JSON Patch operations are applied one at a time, each refused before it could take
//! the state past a limit, with an undo log so that a refused or failing patch changes nothing.

use std::fmt::Write as _;

use json_patch::jsonptr::{Pointer, PointerBuf};
use json_patch::PatchOperation;
use serde_json::{Map, Value};

/// Most levels of arrays and objects a retained state may nest (`{"a":[1]}` is 2 deep). A change
/// that would nest it deeper is refused with `413 state_too_large`. It is well under serde_json's
/// limit of 128 levels when parsing, so that everything that carries a state reads back: the
/// state file (3 levels around each state), snapshot events (1), `json_patch` events (3 around an
/// operation's value), a Redis node's stored states (1); and nothing the gateway serialises,
/// clones or drops recurses deeper than that.
pub const MAX_STATE_DEPTH: usize = 64;

/// One request may measure at most this many times the state limit of values already in the
/// state (what `remove`, `replace`, `copy` and deeper `move`s take or duplicate), besides what it
/// brings itself; beyond that it is refused. Without a cap, a request of many small operations
/// that each copy or replace a large part of the state would cost time (and, held for undoing,
/// memory) quadratic in its size.
const WORK_FACTOR: usize = 8;

/// The limits a state is kept within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most bytes of compact JSON text (`--max-state-bytes`).
    pub max_bytes: usize,
    /// Most levels of nesting ([`MAX_STATE_DEPTH`]).
    pub max_depth: usize,
}

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The state would pass a limit (`413 state_too_large`).
    TooLarge(String),
    /// A JSON Patch operation does not apply (`409 patch_failed`).
    Failed(String),
    /// A delete of a topic that has no state (`404 unknown_topic`).
    Unknown,
}

/// The size and depth of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Measured {
    /// Bytes of compact JSON text.
    pub size: usize,
    /// Levels of arrays and objects (0 for a scalar).
    pub depth: usize,
}

/// Which bound [`measure`] stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passed {
    Size,
    Depth,
}

/// Counts the bytes written to it.
struct Count(usize);

impl std::fmt::Write for Count {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// The length of `s` as a JSON string literal, quotes included, as serde_json escapes it.
pub(crate) fn str_size(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn scalar_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => {
            let mut c = Count(0);
            // Counting cannot fail.
            let _ = write!(c, "{n}");
            c.0
        }
        Value::String(s) => str_size(s),
        Value::Array(_) | Value::Object(_) => 0,
    }
}

enum Members<'a> {
    Array(std::slice::Iter<'a, Value>),
    Object(serde_json::map::Iter<'a>),
}

/// The size of `v` as compact JSON text and its depth, without recursion, or which bound it
/// passes: it stops as soon as the size passes `max_size` or the depth `max_depth`, so it costs
/// at most about `max_size` steps whatever `v` is.
pub(crate) fn measure(v: &Value, max_size: usize, max_depth: usize) -> Result<Measured, Passed> {
    let mut size = 0usize;
    let mut depth = 0usize;
    let mut open: Vec<Members<'_>> = Vec::new();
    let mut next = Some(v);
    loop {
        if let Some(v) = next.take() {
            match v {
                Value::Array(a) => {
                    size += 2 + a.len().saturating_sub(1);
                    open.push(Members::Array(a.iter()));
                }
                Value::Object(m) => {
                    size += 2 + m.len().saturating_sub(1);
                    open.push(Members::Object(m.iter()));
                }
                scalar => size += scalar_size(scalar),
            }
            depth = depth.max(open.len());
            if depth > max_depth {
                return Err(Passed::Depth);
            }
            if size > max_size {
                return Err(Passed::Size);
            }
        }
        match open.last_mut() {
            None => return Ok(Measured { size, depth }),
            Some(Members::Array(items)) => match items.next() {
                Some(item) => next = Some(item),
                None => {
                    open.pop();
                }
            },
            Some(Members::Object(members)) => match members.next() {
                Some((key, value)) => {
                    size += str_size(key) + 1;
                    next = Some(value);
                }
                None => {
                    open.pop();
                }
            },
        }
    }
}

/// The whole size of a state (one already held, so not bounded by the limits).
pub(crate) fn size_of(state: &Value) -> usize {
    measure(state, usize::MAX, usize::MAX).map(|m| m.size).unwrap_or(usize::MAX)
}

/// Checks the changes of one request against the limits and keeps count of the work spent
/// measuring what the state already holds.
pub(crate) struct Meter {
    limits: Limits,
    /// Bytes of state values that may still be measured.
    work: usize,
}

impl Meter {
    /// A meter for one request.
    pub(super) fn new(limits: Limits) -> Self {
        Meter { limits, work: limits.max_bytes.saturating_mul(WORK_FACTOR) }
    }

    fn too_large(&self, size: usize) -> Refusal {
        Refusal::TooLarge(format!(
            "the state would take {size} bytes or more as JSON, more than the limit of {} (--max-state-bytes)",
            self.limits.max_bytes
        ))
    }

    fn too_deep(&self) -> Refusal {
        Refusal::TooLarge(format!(
            "the state would nest more than {} levels of arrays and objects",
            self.limits.max_depth
        ))
    }

    /// Refuses a state of `size` bytes if it is over the limit.
    pub(super) fn fits(&self, size: usize) -> Result<(), Refusal> {
        if size > self.limits.max_bytes {
            return Err(self.too_large(size));
        }
        Ok(())
    }

    /// The depth left below a location `at` levels down, or a refusal if there is none.
    fn room_below(&self, at: usize) -> Result<usize, Refusal> {
        self.limits.max_depth.checked_sub(at).ok_or_else(|| self.too_deep())
    }

    /// Measures a value the request brings, to be placed `at` levels down: refused if it is
    /// larger than a whole state may be, or would nest too deep there. What it brings, it may
    /// later measure again at no cost to the budget (a value replaced by a later operation).
    pub(super) fn incoming(&mut self, v: &Value, at: usize) -> Result<usize, Refusal> {
        let room = self.room_below(at)?;
        match measure(v, self.limits.max_bytes, room) {
            Ok(m) => {
                self.work = self.work.saturating_add(m.size);
                Ok(m.size)
            }
            Err(Passed::Size) => Err(self.too_large(self.limits.max_bytes + 1)),
            Err(Passed::Depth) => Err(self.too_deep()),
        }
    }

    /// Measures a value the state holds (one that a change removes, replaces or duplicates), to
    /// be placed `at` levels down (`None`: not placed anywhere, depth does not matter) and, when
    /// `copied`, refused if larger than a whole state may be.
    fn held(&mut self, v: &Value, at: Option<usize>, copied: bool) -> Result<usize, Refusal> {
        let room = match at {
            Some(at) => self.room_below(at)?,
            None => usize::MAX,
        };
        let cap = if copied { self.work.min(self.limits.max_bytes) } else { self.work };
        match measure(v, cap, room) {
            Ok(m) => {
                self.work -= m.size;
                Ok(m.size)
            }
            Err(Passed::Depth) => Err(self.too_deep()),
            Err(Passed::Size) if copied && cap == self.limits.max_bytes => Err(self.too_large(cap + 1)),
            Err(Passed::Size) => Err(Refusal::TooLarge(format!(
                "the changes take, move or copy more than {WORK_FACTOR} times --max-state-bytes ({}) of the state in all: \
                 split them over several requests",
                self.limits.max_bytes
            ))),
        }
    }

    /// The size of a value the state holds.
    pub(super) fn size_held(&mut self, v: &Value) -> Result<usize, Refusal> {
        self.held(v, None, false)
    }
}

/// What merging `patch` (RFC 7386) into `old` (`None`: nothing there; `known`: its size, if
/// known) at `at` levels down adds to the size of the state, without doing it; refused if the
/// result would nest too deep. Costs the patch's size plus that of the values it removes or
/// replaces.
pub(crate) fn merge_growth(
    old: Option<&Value>,
    known: Option<usize>,
    patch: &Value,
    at: usize,
    meter: &mut Meter,
) -> Result<i64, Refusal> {
    let old_size = |v: &Value, meter: &mut Meter| match known {
        Some(size) => Ok(size),
        None => meter.size_held(v),
    };
    let Value::Object(members) = patch else {
        let new = meter.incoming(patch, at)?;
        let old = match old {
            Some(v) => old_size(v, meter)?,
            None => 0,
        };
        return Ok(new as i64 - old as i64);
    };
    meter.room_below(at + 1)?;
    let (base, mut growth): (Option<&Map<String, Value>>, i64) = match old {
        Some(Value::Object(map)) => (Some(map), 0),
        Some(other) => (None, 2 - old_size(other, meter)? as i64),
        None => (None, 2),
    };
    let before = base.map_or(0, Map::len);
    let mut after = before;
    for (key, value) in members {
        let prev = base.and_then(|m| m.get(key));
        match (prev, value.is_null()) {
            (None, true) => {}
            (Some(prev), true) => {
                growth -= (str_size(key) + 1 + meter.size_held(prev)?) as i64;
                after -= 1;
            }
            (Some(prev), false) => growth += merge_growth(Some(prev), None, value, at + 1, meter)?,
            (None, false) => {
                growth += (str_size(key) + 1) as i64 + merge_growth(None, None, value, at + 1, meter)?;
                after += 1;
            }
        }
    }
    Ok(growth + after.saturating_sub(1) as i64 - before.saturating_sub(1) as i64)
}

/// A place in a document.
#[derive(Debug, Clone)]
enum Loc {
    /// The whole document.
    Root,
    /// A member of the object at the pointer.
    Key(PointerBuf, String),
    /// A position in the array at the pointer.
    At(PointerBuf, usize),
}

impl Loc {
    /// Levels down from the root.
    fn depth(&self) -> usize {
        match self {
            Loc::Root => 0,
            Loc::Key(parent, _) | Loc::At(parent, _) => parent.count() + 1,
        }
    }

    fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        match self {
            Loc::Root => Some(doc),
            Loc::Key(parent, key) => doc.pointer(parent.as_str())?.as_object()?.get(key),
            Loc::At(parent, i) => doc.pointer(parent.as_str())?.as_array()?.get(*i),
        }
    }

    /// Bytes a value placed here costs besides its own: the key and the separators.
    fn overhead(&self, doc: &Value, placing: bool) -> usize {
        let (key, len) = match self {
            Loc::Root => return 0,
            Loc::Key(parent, key) => {
                let len = doc.pointer(parent.as_str()).and_then(Value::as_object).map_or(0, Map::len);
                (str_size(key) + 1, len)
            }
            Loc::At(parent, _) => (0, doc.pointer(parent.as_str()).and_then(Value::as_array).map_or(0, Vec::len)),
        };
        // A comma sits between members: one more member adds one unless it is the first.
        let others = if placing { len } else { len.saturating_sub(1) };
        key + usize::from(others > 0)
    }

    /// Takes the value out (the whole document becomes `null`).
    fn take(&self, doc: &mut Value) -> Option<Value> {
        match self {
            Loc::Root => Some(std::mem::take(doc)),
            Loc::Key(parent, key) => doc.pointer_mut(parent.as_str())?.as_object_mut()?.remove(key),
            Loc::At(parent, i) => {
                let items = doc.pointer_mut(parent.as_str())?.as_array_mut()?;
                (*i < items.len()).then(|| items.remove(*i))
            }
        }
    }

    /// Puts a value in, as `add` does (an array shifts; a member or the document is replaced);
    /// returns what it replaced.
    fn put(&self, doc: &mut Value, v: Value) -> Option<Value> {
        match self {
            Loc::Root => Some(std::mem::replace(doc, v)),
            Loc::Key(parent, key) => doc.pointer_mut(parent.as_str())?.as_object_mut()?.insert(key.clone(), v),
            Loc::At(parent, i) => {
                let items = doc.pointer_mut(parent.as_str())?.as_array_mut()?;
                items.insert((*i).min(items.len()), v);
                None
            }
        }
    }

    /// Replaces the value there, as `replace` does; returns it.
    fn set(&self, doc: &mut Value, v: Value) -> Option<Value> {
        match self {
            Loc::At(parent, i) => {
                let slot = doc.pointer_mut(parent.as_str())?.as_array_mut()?.get_mut(*i)?;
                Some(std::mem::replace(slot, v))
            }
            other => other.put(doc, v),
        }
    }
}

fn invalid(what: &str) -> Refusal {
    Refusal::Failed(format!("{what} is invalid"))
}

/// Where `add` at `path` puts its value (`-` in an array: its end).
fn add_loc(doc: &Value, path: &Pointer) -> Result<Loc, Refusal> {
    let Some((parent, last)) = path.split_back() else { return Ok(Loc::Root) };
    match doc.pointer(parent.as_str()) {
        Some(Value::Object(_)) => Ok(Loc::Key(parent.to_buf(), last.decoded().into_owned())),
        Some(Value::Array(items)) => {
            let i =
                last.to_index().ok().and_then(|i| i.for_len_incl(items.len()).ok()).ok_or_else(|| invalid("path"))?;
            Ok(Loc::At(parent.to_buf(), i))
        }
        _ => Err(invalid("path")),
    }
}

/// Where the existing value at `path` is (`what` names the pointer in errors).
fn existing_loc(doc: &Value, path: &Pointer, what: &str) -> Result<Loc, Refusal> {
    let Some((parent, last)) = path.split_back() else { return Ok(Loc::Root) };
    let loc = match doc.pointer(parent.as_str()) {
        Some(Value::Object(_)) => Loc::Key(parent.to_buf(), last.decoded().into_owned()),
        Some(Value::Array(items)) => {
            let i = last.to_index().ok().and_then(|i| i.for_len(items.len()).ok()).ok_or_else(|| invalid(what))?;
            Loc::At(parent.to_buf(), i)
        }
        _ => return Err(invalid(what)),
    };
    match loc.get(doc) {
        Some(_) => Ok(loc),
        None => Err(invalid(what)),
    }
}

/// How to take back one step of a patch.
enum Undo {
    /// Take out what the step put there.
    Take(Loc),
    /// Put back what the step took out or replaced (as `add` does).
    Put(Loc, Value),
    /// Set back what the step replaced in place.
    Set(Loc, Value),
    /// A move: take the value back from `now` to `was`, and put back at `now` what it replaced.
    Move { now: Loc, was: Loc, replaced: Option<Value> },
}

impl Undo {
    fn apply(self, doc: &mut Value) {
        match self {
            Undo::Take(loc) => {
                loc.take(doc);
            }
            Undo::Put(loc, v) => {
                loc.put(doc, v);
            }
            Undo::Set(loc, v) => {
                loc.set(doc, v);
            }
            Undo::Move { now, was, replaced } => {
                let moved = match (&now, replaced) {
                    (Loc::Root, Some(before)) => Some(std::mem::replace(doc, before)),
                    (_, replaced) => {
                        let moved = now.take(doc);
                        if let Some(before) = replaced {
                            now.put(doc, before);
                        }
                        moved
                    }
                };
                if let Some(v) = moved {
                    was.put(doc, v);
                }
            }
        }
    }
}

/// Applies JSON Patch (RFC 6902) `ops` to `doc`, whose size is `size`, one at a time and all or
/// none: an operation that would take the state past a limit is refused before it is made, and
/// on any refusal the operations already made are undone. `size` follows the document.
pub(crate) fn apply_ops(
    doc: &mut Value,
    size: &mut usize,
    ops: &[PatchOperation],
    meter: &mut Meter,
) -> Result<(), Refusal> {
    let mut undo: Vec<Undo> = Vec::new();
    let start = *size;
    for (i, op) in ops.iter().enumerate() {
        if let Err(refusal) = apply_op(doc, size, op, meter, &mut undo) {
            for step in undo.into_iter().rev() {
                step.apply(doc);
            }
            *size = start;
            let (name, path) = describe(op);
            let at = |m: String| format!("operation {i} ({name} at {path:?}): {m}");
            return Err(match refusal {
                Refusal::Failed(m) => Refusal::Failed(at(m)),
                Refusal::TooLarge(m) => Refusal::TooLarge(at(m)),
                Refusal::Unknown => Refusal::Unknown,
            });
        }
    }
    Ok(())
}

fn describe(op: &PatchOperation) -> (&'static str, &str) {
    match op {
        PatchOperation::Add(o) => ("add", o.path.as_str()),
        PatchOperation::Remove(o) => ("remove", o.path.as_str()),
        PatchOperation::Replace(o) => ("replace", o.path.as_str()),
        PatchOperation::Move(o) => ("move", o.path.as_str()),
        PatchOperation::Copy(o) => ("copy", o.path.as_str()),
        PatchOperation::Test(o) => ("test", o.path.as_str()),
    }
}

/// The document's size once `loc`'s value (of `old` bytes, `None`: a new place) becomes one of
/// `new` bytes.
fn resized(size: usize, overhead: usize, old: Option<usize>, new: usize) -> usize {
    match old {
        Some(old) => size.saturating_sub(old).saturating_add(new),
        None => size.saturating_add(overhead).saturating_add(new),
    }
}

fn apply_op(
    doc: &mut Value,
    size: &mut usize,
    op: &PatchOperation,
    meter: &mut Meter,
    undo: &mut Vec<Undo>,
) -> Result<(), Refusal> {
    match op {
        PatchOperation::Test(op) => {
            let target = doc.pointer(op.path.as_str()).ok_or_else(|| invalid("path"))?;
            if *target != op.value {
                return Err(Refusal::Failed("value did not match".into()));
            }
        }
        PatchOperation::Add(op) => {
            let loc = add_loc(doc, &op.path)?;
            let new = meter.incoming(&op.value, loc.depth())?;
            let (old, overhead) = replaced_at(doc, *size, &loc, meter)?;
            let total = resized(*size, overhead, old, new);
            meter.fits(total)?;
            let before = loc.put(doc, op.value.clone());
            undo.push(match before {
                Some(v) => Undo::Put(loc, v),
                None => Undo::Take(loc),
            });
            *size = total;
        }
        PatchOperation::Replace(op) => {
            let loc = existing_loc(doc, &op.path, "path")?;
            let new = meter.incoming(&op.value, loc.depth())?;
            let old = match &loc {
                Loc::Root => *size,
                loc => meter.size_held(loc.get(doc).ok_or_else(|| invalid("path"))?)?,
            };
            let total = resized(*size, 0, Some(old), new);
            meter.fits(total)?;
            let before = loc.set(doc, op.value.clone()).ok_or_else(|| invalid("path"))?;
            undo.push(Undo::Set(loc, before));
            *size = total;
        }
        PatchOperation::Remove(op) => {
            let loc = existing_loc(doc, &op.path, "path")?;
            if matches!(loc, Loc::Root) {
                return Err(invalid("path"));
            }
            let overhead = loc.overhead(doc, false);
            let old = meter.size_held(loc.get(doc).ok_or_else(|| invalid("path"))?)?;
            let v = loc.take(doc).ok_or_else(|| invalid("path"))?;
            undo.push(Undo::Put(loc, v));
            *size = size.saturating_sub(old + overhead);
        }
        PatchOperation::Copy(op) => {
            let source = doc.pointer(op.from.as_str()).ok_or_else(|| invalid("\"from\" path"))?;
            let loc = add_loc(doc, &op.path)?;
            // A copy adds what it copies: measured first, so that a state is never duplicated
            // past the limit.
            let new = meter.held(source, Some(loc.depth()), true)?;
            let copy = source.clone();
            let (old, overhead) = replaced_at(doc, *size, &loc, meter)?;
            let total = resized(*size, overhead, old, new);
            meter.fits(total)?;
            let before = loc.put(doc, copy);
            undo.push(match before {
                Some(v) => Undo::Put(loc, v),
                None => Undo::Take(loc),
            });
            *size = total;
        }
        PatchOperation::Move(op) => {
            if op.path.starts_with(&op.from) && op.path.len() != op.from.len() {
                return Err(Refusal::Failed("cannot move the value inside itself".into()));
            }
            let was = existing_loc(doc, &op.from, "\"from\" path")?;
            if matches!(was, Loc::Root) {
                return Err(invalid("\"from\" path"));
            }
            let taken_overhead = was.overhead(doc, false);
            let value = was.take(doc).ok_or_else(|| invalid("\"from\" path"))?;
            // Everything below is undone by hand until the move is logged.
            let placed = place_moved(doc, *size - taken_overhead.min(*size), &was, &op.path, &value, meter);
            match placed {
                Ok((now, total)) => {
                    let replaced = now.put(doc, value);
                    undo.push(Undo::Move { now, was, replaced });
                    *size = total;
                }
                Err(refusal) => {
                    was.put(doc, value);
                    return Err(refusal);
                }
            }
        }
    }
    Ok(())
}

/// The size of what `loc` holds now, if anything, and what a new value there costs besides its
/// own size (`size`: the document's).
fn replaced_at(doc: &Value, size: usize, loc: &Loc, meter: &mut Meter) -> Result<(Option<usize>, usize), Refusal> {
    match loc {
        Loc::Root => Ok((Some(size), 0)),
        Loc::At(..) => Ok((None, loc.overhead(doc, true))),
        loc => match loc.get(doc) {
            Some(old) => Ok((Some(meter.size_held(old)?), 0)),
            None => Ok((None, loc.overhead(doc, true))),
        },
    }
}

/// Where a moved value goes (`doc` no longer holds it; `rest` is the size of the document less
/// the value and its old place) and the document's size after, or why it cannot go there.
fn place_moved(
    doc: &Value,
    rest: usize,
    was: &Loc,
    path: &Pointer,
    value: &Value,
    meter: &mut Meter,
) -> Result<(Loc, usize), Refusal> {
    let now = add_loc(doc, path)?;
    // The value's own size cancels out unless it becomes the whole document; its depth matters
    // only when it goes deeper than it was.
    let deeper = now.depth() > was.depth();
    let own = match &now {
        Loc::Root => Some(meter.held(value, Some(0), false)?),
        _ if deeper => {
            meter.held(value, Some(now.depth()), false)?;
            None
        }
        _ => None,
    };
    let total = match own {
        Some(own) => own,
        None => {
            // `rest` still counts the value itself, which is not in `doc` now: no place in `doc`
            // is the root here, so `replaced_at` measures what it replaces.
            let (old, overhead) = replaced_at(doc, usize::MAX, &now, meter)?;
            match old {
                Some(old) => rest.saturating_sub(old),
                None => rest.saturating_add(overhead),
            }
        }
    };
    meter.fits(total)?;
    Ok((now, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits(max_bytes: usize) -> Limits {
        Limits { max_bytes, max_depth: MAX_STATE_DEPTH }
    }

    fn ops(v: Value) -> json_patch::Patch {
        serde_json::from_value(v).unwrap()
    }

    fn nested(depth: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..depth {
            v = json!({ "a": v });
        }
        v
    }

    #[test]
    fn sizes_are_those_of_compact_json() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-12345678901i64),
            json!(u64::MAX),
            json!(1.5e300),
            json!(0.1),
            json!(""),
            json!("a\"b\\c\n\u{1}\u{7f}é😀"),
            json!([]),
            json!({}),
            json!([1, [2, [3, {}]], {"k": [null]}]),
            json!({"a\tb": {"": [true, false]}, "z": "y"}),
        ];
        for v in values {
            let m = measure(&v, usize::MAX, usize::MAX).unwrap();
            assert_eq!(m.size, serde_json::to_string(&v).unwrap().len(), "{v}");
        }
        assert_eq!(measure(&json!([1, [2, [3, {}]]]), usize::MAX, usize::MAX).unwrap().depth, 4);
        assert_eq!(measure(&json!(1), usize::MAX, usize::MAX).unwrap().depth, 0);
    }

    #[test]
    fn measuring_stops_at_the_bounds() {
        let big = json!(["x".repeat(1000), "y".repeat(1000)]);
        assert_eq!(measure(&big, 500, 64), Err(Passed::Size));
        assert_eq!(measure(&nested(10), usize::MAX, 9), Err(Passed::Depth));
        assert!(measure(&nested(10), usize::MAX, 10).is_ok());
        // Far deeper than any recursion could go: measured without recursion.
        let mut deep = json!(0);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(measure(&deep, usize::MAX, usize::MAX).unwrap().depth, 100_000);
        // Drop it without recursing either.
        let mut v = deep;
        while let Value::Array(mut a) = v {
            v = a.pop().unwrap_or(Value::Null);
        }
    }

    /// Applies `patch` to `doc` and checks that the size kept is the size of the result, or that
    /// a refusal left `doc` as it was.
    fn check(doc: &Value, patch: Value, max_bytes: usize) -> Result<Value, Refusal> {
        let mut out = doc.clone();
        let mut size = size_of(&out);
        let mut meter = Meter::new(limits(max_bytes));
        match apply_ops(&mut out, &mut size, &ops(patch), &mut meter) {
            Ok(()) => {
                assert_eq!(size, size_of(&out), "size kept in step with {out}");
                Ok(out)
            }
            Err(e) => {
                assert_eq!(&out, doc, "a refused patch changes nothing");
                assert_eq!(size, size_of(doc));
                Err(e)
            }
        }
    }

    #[test]
    fn operations_agree_with_json_patch_and_keep_the_size() {
        let doc = json!({"a": {"b": [1, 2, 3], "c": "x"}, "d": [], "e": null});
        let patches = [
            json!([{"op": "add", "path": "/a/b/1", "value": {"n": [true]}}]),
            json!([{"op": "add", "path": "/a/b/-", "value": 9}, {"op": "add", "path": "/d/0", "value": "first"}]),
            json!([{"op": "add", "path": "/a/c", "value": [1, 2]}, {"op": "add", "path": "/new", "value": {}}]),
            json!([{"op": "add", "path": "", "value": [1]}]),
            json!([{"op": "remove", "path": "/a/b/0"}, {"op": "remove", "path": "/e"}, {"op": "remove", "path": "/d"}]),
            json!([{"op": "replace", "path": "/a/b/2", "value": "z"}, {"op": "replace", "path": "", "value": {"k": 1}}]),
            json!([{"op": "move", "from": "/a/b", "path": "/d/0"}, {"op": "move", "from": "/a/c", "path": "/cc"}]),
            json!([{"op": "move", "from": "/a/b", "path": "/a"}]),
            json!([{"op": "move", "from": "/a/b/0", "path": "/a/b/2"}, {"op": "move", "from": "/a", "path": ""}]),
            json!([{"op": "move", "from": "/e", "path": "/e"}, {"op": "move", "from": "/a/b/1", "path": "/a/b/1"}]),
            json!([{"op": "copy", "from": "", "path": "/a/self"}, {"op": "copy", "from": "/a/b", "path": "/d/-"}]),
            json!([{"op": "copy", "from": "/a/b", "path": "/a/c"}, {"op": "copy", "from": "/a", "path": ""}]),
            json!([{"op": "test", "path": "/a/b", "value": [1, 2, 3]}, {"op": "test", "path": "", "value": doc.clone()}]),
        ];
        for p in patches {
            let mut expected = doc.clone();
            json_patch::patch(&mut expected, &ops(p.clone())).unwrap();
            assert_eq!(check(&doc, p.clone(), 1 << 20), Ok(expected), "{p}");
        }
    }

    #[test]
    fn failing_operations_undo_everything_before_them() {
        let doc = json!({"a": {"b": [1, 2, 3], "c": "x"}, "d": [], "e": null});
        let tail = |last: Value| {
            json!([
                {"op": "add", "path": "/a/b/-", "value": 4},
                {"op": "remove", "path": "/a/b/0"},
                {"op": "replace", "path": "/a/c", "value": "y"},
                {"op": "move", "from": "/a/b", "path": "/d/0"},
                {"op": "move", "from": "/e", "path": "/a/e"},
                {"op": "copy", "from": "/a", "path": "/f"},
                {"op": "add", "path": "/a", "value": 1},
                {"op": "move", "from": "/f", "path": ""},
                last
            ])
        };
        for last in [
            json!({"op": "test", "path": "/c", "value": 0}),
            json!({"op": "remove", "path": "/nope"}),
            json!({"op": "add", "path": "/x/y", "value": 1}),
            json!({"op": "replace", "path": "/b/-", "value": 1}),
            json!({"op": "move", "from": "/b", "path": "/b/c"}),
            json!({"op": "copy", "from": "/missing", "path": "/x"}),
            json!({"op": "remove", "path": ""}),
        ] {
            let e = check(&doc, tail(last.clone()), 1 << 20).unwrap_err();
            assert!(matches!(&e, Refusal::Failed(m) if m.starts_with("operation 8 ")), "{last}: {e:?}");
        }
    }

    #[test]
    fn a_copy_bomb_is_refused_before_it_grows() {
        let doc = json!({"s": "x".repeat(1000)});
        let bomb: Vec<Value> = (0..40).map(|i| json!({"op": "copy", "from": "", "path": format!("/{i}")})).collect();
        let e = check(&doc, Value::Array(bomb), 1 << 20).unwrap_err();
        assert!(matches!(&e, Refusal::TooLarge(m) if m.contains("--max-state-bytes")), "{e:?}");
        // Each copy doubles the state: the tenth would pass 1 MiB.
        assert!(matches!(&e, Refusal::TooLarge(m) if m.starts_with("operation 10 ")), "{e:?}");
    }

    #[test]
    fn states_stay_within_the_size_limit_to_the_byte() {
        let doc = json!({"a": "x"});
        let limit = size_of(&doc) + 20;
        // {"a":"x","b":"…"} adds ,"b":"…" = 7 + the string.
        let fits = json!([{"op": "add", "path": "/b", "value": "y".repeat(13)}]);
        assert!(check(&doc, fits, limit).is_ok());
        let over = json!([{"op": "add", "path": "/b", "value": "y".repeat(14)}]);
        assert!(matches!(check(&doc, over, limit), Err(Refusal::TooLarge(_))));
        // Replacing a large value by a small one always fits.
        let big = json!({"a": "x".repeat(100)});
        let smaller = json!([{"op": "replace", "path": "/a", "value": "y"}, {"op": "add", "path": "/b", "value": 1}]);
        assert!(check(&big, smaller, size_of(&big)).is_ok());
    }

    #[test]
    fn depth_is_refused_at_the_limit() {
        let doc = json!({"a": nested(MAX_STATE_DEPTH - 2)});
        assert_eq!(measure(&doc, usize::MAX, usize::MAX).unwrap().depth, MAX_STATE_DEPTH - 1);
        let mut path = String::new();
        for _ in 0..MAX_STATE_DEPTH - 1 {
            path.push_str("/a");
        }
        // The innermost `a` holds 1: an array there makes the state exactly the limit deep.
        assert!(check(&doc, json!([{"op": "replace", "path": path, "value": [1]}]), 1 << 20).is_ok());
        let e = check(&doc, json!([{"op": "replace", "path": path, "value": [[1]]}]), 1 << 20).unwrap_err();
        assert!(matches!(&e, Refusal::TooLarge(m) if m.contains("levels")), "{e:?}");
        // Copies and moves deeper are measured too.
        assert!(check(&doc, json!([{"op": "copy", "from": "/a", "path": "/a/b"}]), 1 << 20).is_ok());
        let e = check(&doc, json!([{"op": "copy", "from": "/a", "path": "/a/a/b"}]), 1 << 20).unwrap_err();
        assert!(matches!(&e, Refusal::TooLarge(m) if m.contains("levels")), "{e:?}");
        let two = json!({"x": nested(MAX_STATE_DEPTH - 1), "y": {}});
        let e = check(&two, json!([{"op": "move", "from": "/x", "path": "/y/x"}]), 1 << 20).unwrap_err();
        assert!(matches!(&e, Refusal::TooLarge(m) if m.contains("levels")), "{e:?}");
        assert!(check(&two, json!([{"op": "move", "from": "/y", "path": "/x/a"}]), 1 << 20).is_ok());
    }

    #[test]
    fn repeated_copies_over_the_same_place_run_out_of_budget() {
        let doc = json!({"a": "x".repeat(10_000), "b": 0});
        let copies: Vec<Value> = (0..1000).map(|_| json!({"op": "copy", "from": "/a", "path": "/b"})).collect();
        let e = check(&doc, Value::Array(copies), 100_000).unwrap_err();
        assert!(matches!(&e, Refusal::TooLarge(m) if m.contains("split them")), "{e:?}");
        // A few are fine.
        let copies: Vec<Value> = (0..5).map(|_| json!({"op": "copy", "from": "/a", "path": "/b"})).collect();
        assert!(check(&doc, Value::Array(copies), 100_000).is_ok());
    }

    #[test]
    fn merge_growth_is_the_merged_size_change() {
        let docs = [json!(null), json!({"a": 1, "b": {"c": [1, 2]}}), json!([1]), json!({})];
        let patches = [
            json!({"a": null}),
            json!({"a": 2, "x": {"y": null, "z": "w"}}),
            json!({"b": {"c": null, "d": {}}}),
            json!({"b": null, "a": null}),
            json!([1, 2]),
            json!(null),
            json!({"b": {"c": {"deep": [1]}}}),
        ];
        for doc in &docs {
            for p in &patches {
                let mut meter = Meter::new(limits(1 << 20));
                let growth = merge_growth(Some(doc), Some(size_of(doc)), p, 0, &mut meter).unwrap();
                let mut merged = doc.clone();
                json_patch::merge(&mut merged, p);
                assert_eq!(size_of(doc) as i64 + growth, size_of(&merged) as i64, "{doc} + {p}");
            }
        }
        let mut meter = Meter::new(limits(1 << 20));
        assert!(merge_growth(None, None, &nested(MAX_STATE_DEPTH + 1), 0, &mut meter).is_err());
    }
}
