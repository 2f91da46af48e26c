//! Policy over the data a request moves: which passages may reach which model
//! endpoints ([`residency`]), what moving them between clouds costs ([`egress`]),
//! and where a workload should run ([`placement`]).

pub mod classification;
pub mod egress;
pub mod placement;
pub mod residency;
pub mod search_zone;
