//! The format code of a parameter or column value.

/// How a value is represented on the wire. Codes other than 0 and 1 are
/// refused when decoding: PostgreSQL refuses them too, and the proxy cannot
/// inspect a value it does not know how to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// The type's text output (code 0).
    #[default]
    Text,
    /// The type's binary send format (code 1).
    Binary,
}

impl Format {
    /// The format for a wire code.
    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Self::Text),
            1 => Some(Self::Binary),
            _ => None,
        }
    }

    /// The wire code.
    pub fn code(self) -> i16 {
        match self {
            Self::Text => 0,
            Self::Binary => 1,
        }
    }

    /// The format of value `index` given a message's list of format codes:
    /// none means all text, one applies to all, otherwise one per value.
    pub fn for_index(formats: &[Self], index: usize) -> Self {
        match formats {
            [] => Self::Text,
            [one] => *one,
            many => many.get(index).copied().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(Format::from_code(0), Some(Format::Text));
        assert_eq!(Format::from_code(1), Some(Format::Binary));
        assert_eq!(Format::from_code(2), None);
        assert_eq!(Format::from_code(-1), None);
        assert_eq!(Format::Binary.code(), 1);
    }

    #[test]
    fn for_index_applies_the_protocol_rule() {
        assert_eq!(Format::for_index(&[], 3), Format::Text);
        assert_eq!(Format::for_index(&[Format::Binary], 3), Format::Binary);
        assert_eq!(
            Format::for_index(&[Format::Text, Format::Binary], 1),
            Format::Binary
        );
    }
}
