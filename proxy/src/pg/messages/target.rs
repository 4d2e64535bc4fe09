//! What a Describe or Close names: a prepared statement or a portal.

use crate::pg::Result;
use crate::pg::wire::Reader;

/// A prepared statement or a portal; the empty name is the unnamed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A prepared statement (`S`).
    Statement,
    /// A portal (`P`).
    Portal,
}

impl Target {
    pub(crate) fn read(r: &mut Reader) -> Result<Self> {
        match r.u8()? {
            b'S' => Ok(Self::Statement),
            b'P' => Ok(Self::Portal),
            _ => Err(r.invalid("target type")),
        }
    }

    /// The wire byte.
    pub fn code(self) -> u8 {
        match self {
            Self::Statement => b'S',
            Self::Portal => b'P',
        }
    }
}
