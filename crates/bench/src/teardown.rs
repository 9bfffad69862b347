//! The teardown stack: every mount, loop device, daemon and directory the harness makes is
//! pushed with the step that undoes it, and undone in reverse order: by `unwind_to` (a
//! configuration going down), and on drop (the end of a run, an error, a caught signal).

use crate::log;

type Undo = Box<dyn FnOnce() -> anyhow::Result<()>>;

struct Step {
    what: String,
    undo: Undo,
}

#[derive(Default)]
pub struct Teardown {
    steps: Vec<Step>,
}

impl Teardown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers what was just made and how to undo it.
    pub fn push(
        &mut self,
        what: impl Into<String>,
        undo: impl FnOnce() -> anyhow::Result<()> + 'static,
    ) {
        self.steps.push(Step {
            what: what.into(),
            undo: Box::new(undo),
        });
    }

    /// How many steps are on the stack: a mark for `unwind_to`.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Undoes every step pushed after `mark`, newest first. Each step runs even when one
    /// before it failed; the first failure is returned.
    pub fn unwind_to(&mut self, mark: usize) -> anyhow::Result<()> {
        let mut first_err = None;
        while self.steps.len() > mark {
            let step = self.steps.pop().expect("len > mark");
            if let Err(e) = (step.undo)() {
                log!("teardown: {}: {e:#}", step.what);
                first_err.get_or_insert(e.context(format!("undoing {}", step.what)));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.is_empty() {
            log!("cleaning up ({} steps)", self.steps.len());
        }
        // Failures were logged by unwind_to; there is no one left to return them to.
        let _ = self.unwind_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn recorder(td: &mut Teardown, log: &Rc<RefCell<Vec<&'static str>>>, name: &'static str) {
        let log = Rc::clone(log);
        td.push(name, move || {
            log.borrow_mut().push(name);
            Ok(())
        });
    }

    #[test]
    fn drop_undoes_in_reverse_order() {
        let log = Rc::new(RefCell::new(Vec::new()));
        {
            let mut td = Teardown::new();
            for name in ["dir", "loop", "mount"] {
                recorder(&mut td, &log, name);
            }
        }
        assert_eq!(*log.borrow(), ["mount", "loop", "dir"]);
    }

    #[test]
    fn unwind_to_stops_at_the_mark_and_keeps_going_after_a_failure() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut td = Teardown::new();
        recorder(&mut td, &log, "disks");
        let mark = td.len();
        recorder(&mut td, &log, "pool");
        td.push("broken", || anyhow::bail!("busy"));
        recorder(&mut td, &log, "mount");
        let err = td.unwind_to(mark).unwrap_err();
        assert!(format!("{err:#}").contains("busy"), "{err:#}");
        assert_eq!(*log.borrow(), ["mount", "pool"]);
        assert_eq!(td.len(), mark);
        drop(td);
        assert_eq!(*log.borrow(), ["mount", "pool", "disks"]);
    }
}
