//! NAT behaviour types (RFC 4787 section 4-5, RFC 5382 section 4-5), shared by the lab and the classifier.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a NAT chooses the external endpoint for outbound traffic from one
/// internal endpoint (RFC 4787 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mapping {
    /// Endpoint-independent: one external endpoint for every destination.
    Eim,
    /// Address-dependent: one external endpoint per destination IP address.
    Adm,
    /// Address-and-port-dependent ("symmetric"): one per destination endpoint.
    Apdm,
}

/// Which inbound packets a NAT admits to an existing mapping (RFC 4787 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filtering {
    /// Endpoint-independent: anyone may reach an existing mapping.
    Eif,
    /// Address-dependent: only IP addresses the host has sent to.
    Adf,
    /// Address-and-port-dependent: only endpoints the host has sent to.
    Apdf,
}

/// How a NAT picks the external port of a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// Keep the internal port when it is free, else take the next free one.
    Preserve,
    /// Each new mapping takes the next port after the previous allocation.
    Sequential,
    /// A uniformly random free port.
    Random,
}

/// What a router sends back when a TCP SYN arrives that no mapping admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsolicitedAnswer {
    /// Silently discard it: the sender's SYN times out and is retransmitted.
    Drop,
    /// Answer with a TCP RST from the public address: the sender sees ECONNREFUSED.
    Rst,
    /// Answer with ICMP port unreachable: the sender's connect fails.
    Icmp,
}

macro_rules! text_enum {
    ($ty:ty, $what:literal, $($variant:ident => $text:literal),+ $(,)?) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];

            /// The lowercase name used in scenario files, JSON and reports.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(<$ty>::$variant),)+
                    _ => Err(UnknownName {
                        what: $what,
                        given: s.to_string(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

text_enum!(Mapping, "mapping", Eim => "eim", Adm => "adm", Apdm => "apdm");
text_enum!(Filtering, "filtering", Eif => "eif", Adf => "adf", Apdf => "apdf");
text_enum!(Allocation, "allocation", Preserve => "preserve", Sequential => "sequential", Random => "random");
text_enum!(UnsolicitedAnswer, "unsolicited answer", Drop => "drop", Rst => "rst", Icmp => "icmp");

/// A name that is not one of a behaviour's known values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{given}`, expected one of: {}", expected.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub expected: &'static [&'static str],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for m in Mapping::ALL {
            assert_eq!(m.as_str().parse::<Mapping>().unwrap(), *m);
            let json = serde_json::to_string(m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
        }
        for f in Filtering::ALL {
            assert_eq!(f.as_str().parse::<Filtering>().unwrap(), *f);
        }
        for a in Allocation::ALL {
            assert_eq!(a.as_str().parse::<Allocation>().unwrap(), *a);
        }
        for u in UnsolicitedAnswer::ALL {
            assert_eq!(u.as_str().parse::<UnsolicitedAnswer>().unwrap(), *u);
        }
    }

    #[test]
    fn unknown_name_lists_what_is_accepted() {
        let err = "symmetric".parse::<Mapping>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown mapping `symmetric`, expected one of: eim, adm, apdm"
        );
    }
}
