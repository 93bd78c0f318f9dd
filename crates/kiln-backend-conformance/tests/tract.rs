//! The conformance suite against the tract backend.

kiln_backend_conformance::conformance_tests!(Some(kiln_backend_tract::TractBackend));
