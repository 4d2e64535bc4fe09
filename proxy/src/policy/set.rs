//! The Policies of a configuration compiled together, rules and masking:
//! the one place that decides what becomes of a Policy that does not
//! compile. The proxy loads a configuration with it, and the operator asks
//! it whether a Policy is valid.
//!
//! Such a Policy is never dropped, which would fail open (a typo in a
//! restrictive Policy would leave a broader allow Policy alone in force),
//! and never refuses the whole configuration, which would keep an older one
//! that may be broader still. It denies everything to the callers it names
//! until it is fixed ([`CompiledPolicy::denying`]); its masking is left out,
//! as nothing reaches those callers anyway.

use super::CompiledPolicy;
use crate::{
    config::{MaskingSettings, NamedPolicy},
    mask::{MAX_CUSTOM_DETECTORS, policy::Maskers},
};

/// Every Policy of a configuration, compiled, and their masking.
#[derive(Debug)]
pub struct PolicySet {
    /// The Policies in the configuration's order; one that does not compile
    /// is in its denying form.
    pub policies: Vec<CompiledPolicy>,
    /// Their masking, by the same positions.
    pub maskers: Maskers,
}

impl PolicySet {
    /// Compiles `policies` with the proxy's masking `settings`.
    ///
    /// # Errors
    ///
    /// Only the settings, which are no Policy's: an unreadable or short
    /// hash key file, a zero scan limit. A Policy that does not compile is
    /// no error (see the [module documentation](self)).
    pub fn compile(policies: &[NamedPolicy], settings: &MaskingSettings) -> Result<PolicySet, String> {
        let mut compiled = Vec::with_capacity(policies.len());
        let mut masking = Vec::with_capacity(policies.len());
        // The Policies' own detectors, counted across the configuration.
        let mut custom = 0;
        for policy in policies {
            let mut rules = CompiledPolicy::compile_or_deny(&policy.name, &policy.spec);
            let mut masks = None;
            if rules.problem().is_none() {
                match Maskers::compile_policy(policy, settings) {
                    Ok(Some(m)) if custom + m.custom_detectors() > MAX_CUSTOM_DETECTORS => {
                        let problem = format!(
                            "Policy {}: masking.customDetectors: with this Policy's {}, the Policies of this Connection define more than {MAX_CUSTOM_DETECTORS} detectors of their own",
                            policy.name,
                            m.custom_detectors()
                        );
                        rules = CompiledPolicy::denying(&policy.name, &policy.spec, problem);
                    }
                    Ok(compiled) => {
                        custom += compiled.as_ref().map_or(0, |m| m.custom_detectors());
                        masks = compiled;
                    }
                    Err(problem) => rules = CompiledPolicy::denying(&policy.name, &policy.spec, problem),
                }
            }
            compiled.push(rules);
            masking.push(masks);
        }
        Ok(PolicySet {
            policies: compiled,
            maskers: Maskers::new(masking, settings)?,
        })
    }

    /// The Policies that do not compile, with why: `(name, problem)`.
    pub fn invalid(&self) -> impl Iterator<Item = (&str, &str)> {
        self.policies
            .iter()
            .filter_map(|p| p.problem().map(|problem| (p.name.as_str(), problem)))
    }
}
