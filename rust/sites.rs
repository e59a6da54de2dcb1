//! Interned source sites ("train.py:42"). Id 0 stands for "no site".

use std::collections::HashMap;

pub type SiteId = u32;
pub const NO_SITE: SiteId = 0;

#[derive(Default)]
pub struct Sites {
    names: Vec<String>,
    ids: HashMap<String, SiteId>,
}

impl Sites {
    pub fn intern(&mut self, s: &str) -> SiteId {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        self.names.push(s.to_owned());
        let id = self.names.len() as SiteId;
        self.ids.insert(s.to_owned(), id);
        id
    }

    pub fn get(&self, id: SiteId) -> Option<&str> {
        if id == NO_SITE {
            None
        } else {
            self.names.get(id as usize - 1).map(String::as_str)
        }
    }

    pub fn is_valid(&self, id: SiteId) -> bool {
        (id as usize) <= self.names.len()
    }

    /// Forgets every site interned after the first `len` (undo of a failed call).
    pub fn truncate(&mut self, len: usize) {
        for name in self.names.drain(len..) {
            self.ids.remove(&name);
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}
