package automation

import (
	"errors"

	"google.golang.org/grpc/codes"

	"github.com/backlog/controlplane/services/kit/credclient"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/store"
)

// Domain is the ErrorInfo domain of this service's errors.
const Domain = "automation.backlog"

// Sentinel errors of the automation service. Their messages are shown to
// callers: they never hold a credential.
var (
	ErrNotFound     = errors.New("automation not found")
	ErrNameTaken    = errors.New("an automation with this name already exists in the workspace")
	ErrGrantTooWide = errors.New("this credential cannot grant or manage more than it holds itself")
	// ErrOwnSecret: an access token asked to rotate the secret of the
	// automation it was exchanged from.
	ErrOwnSecret = errors.New("an access token cannot rotate the secret of the automation it was exchanged from " +
		"(a short-lived token may not turn itself into a long-lived secret): a person (an owner or admin) or another credential must rotate it")
	// ErrManagerFromToken: an access token asked for a long-lived secret that
	// could manage automations (and so rotate the token's own).
	ErrManagerFromToken = errors.New("an access token cannot create an automation holding automations:write, grant that scope, " +
		"or rotate the secret of an automation holding it (that secret could rotate the token's own automation): a person (an owner or admin) or an agent must")
	ErrCredentialUnavailable = credclient.ErrUnavailable
	// ErrIdempotentRace: a request whose Idempotency-Key another request
	// used at the same moment (on another replica) could not be answered
	// with either's result.
	ErrIdempotentRace = errors.New("another request with this Idempotency-Key was being handled at the same moment: " +
		"retry with the same key to get its result")
)

func newErrorTable() *errs.Table {
	return idem.Errors(errs.NewTable(Domain)).
		Add(ErrNotFound, codes.NotFound, "AUTOMATION_NOT_FOUND").
		Add(ErrNameTaken, codes.AlreadyExists, "AUTOMATION_NAME_TAKEN").
		Add(ErrGrantTooWide, codes.PermissionDenied, "GRANT_EXCEEDS_CALLER").
		Add(ErrOwnSecret, codes.PermissionDenied, "OWN_SECRET_ROTATION").
		Add(ErrManagerFromToken, codes.PermissionDenied, "MANAGER_SECRET_FROM_TOKEN").
		Add(ErrIdempotentRace, codes.Aborted, "IDEMPOTENT_REQUEST_RACED").
		Add(ErrCredentialUnavailable, codes.Unavailable, "CREDENTIAL_SERVICE_UNAVAILABLE").
		Add(store.ErrUnavailable, codes.Unavailable, "STORE_UNAVAILABLE")
}
