//! Which plan a call names: a descriptor's command (a JSON plan) or its one-element path (a
//! table, meaning a full scan); and a plan scoped to the caller's namespace, its table and
//! every kernel it calls.

use arrow_flight::FlightDescriptor;
use nearstore_proto::Plan;

use super::{DeviceService, Principal};
use crate::error::{Error, Result};

impl DeviceService {
    pub(super) fn plan_of(&self, descriptor: &FlightDescriptor) -> Result<Plan> {
        if !descriptor.cmd.is_empty() {
            return Ok(Plan::from_json(&descriptor.cmd)?);
        }
        match descriptor.path.as_slice() {
            [table] => Ok(Plan::scan(table)),
            _ => Err(Error::MalformedPlan(
                "descriptor carries neither a plan command nor a one-element table path".into(),
            )),
        }
    }

    /// The caller's plan with its table scoped to the caller's namespace.
    pub(super) fn scoped(who: &Principal, plan: &Plan) -> Result<Plan> {
        let mut p = plan.clone();
        p.table = who.scope(&plan.table)?;
        // Kernels live in the caller's namespace too, wherever the plan calls them: in the
        // filter, a projection or an aggregate.
        let mut bad = None;
        for e in p.exprs_mut() {
            e.visit_kernels_mut(&mut |name| match who.scope(name) {
                Ok(s) => *name = s,
                Err(_) => bad = Some(name.clone()),
            });
        }
        if let Some(name) = bad {
            return Err(Error::UnknownKernel(name));
        }
        Ok(p)
    }
}
