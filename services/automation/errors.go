package automation

import (
	"errors"

	"google.golang.org/grpc/codes"

	"github.com/backlog/controlplane/services/kit/credclient"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/store"
)

// Domain is the ErrorInfo domain of this service's errors.
const Domain = "automation.backlog"

// Sentinel errors of the automation service. Their messages are shown to
// callers: they never hold a credential.
var (
	ErrNotFound              = errors.New("automation not found")
	ErrNameTaken             = errors.New("an automation with this name already exists in the workspace")
	ErrGrantTooWide          = errors.New("an access token cannot grant or manage more than it holds itself")
	ErrCredentialUnavailable = credclient.ErrUnavailable
)

func newErrorTable() *errs.Table {
	return errs.NewTable(Domain).
		Add(ErrNotFound, codes.NotFound, "AUTOMATION_NOT_FOUND").
		Add(ErrNameTaken, codes.AlreadyExists, "AUTOMATION_NAME_TAKEN").
		Add(ErrGrantTooWide, codes.PermissionDenied, "GRANT_EXCEEDS_CALLER").
		Add(ErrCredentialUnavailable, codes.Unavailable, "CREDENTIAL_SERVICE_UNAVAILABLE").
		Add(store.ErrUnavailable, codes.Unavailable, "STORE_UNAVAILABLE")
}
