// Package reliability holds the control plane's cross-service reliability and
// security suites: crash durability under SIGKILL, fuzzing of the parsers that
// see outside input, the REST authorization matrix, a leak scan of logs,
// responses, the audit trail and the stores, revocation under load, fault
// injection at the store, and (in soak mode) sustained load.
//
// Every suite lives in this package's tests. The short versions run in
// `make test`; `make soak` runs the long ones (BACKLOG_SOAK=1) and each fuzz
// target for a few minutes. What each suite proved, with its figures, is in
// docs/reliability.md.
package reliability
