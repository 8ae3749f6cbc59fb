package agent

import (
	"errors"

	"google.golang.org/grpc/codes"

	"github.com/backlog/controlplane/services/kit/credclient"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/store"
)

// Domain is the ErrorInfo domain of this service's errors.
const Domain = "agent.backlog"

// Sentinel errors of the agent service. Their messages are shown to callers:
// they never hold a credential.
var (
	ErrAgentNotFound         = errors.New("agent not found")
	ErrInstallationNotFound  = errors.New("installation not found")
	ErrNameTaken             = errors.New("an agent with this name already exists in the workspace")
	ErrInstallationNameTaken = errors.New("an installation with this name already exists in the workspace")
	ErrGrantTooWide          = errors.New("a caller cannot grant or manage more than it holds itself")
	ErrRevoked               = errors.New("the agent has been revoked: its record is kept, but it can no longer be changed or rotated; register a new agent instead")
	ErrSelfRotateOnly        = errors.New("an agent rotates its own credentials with POST /v1/agents/self/rotate-key, presenting its rotation secret")
	ErrNotAgent              = errors.New("this route takes a visible agent's API key as the Bearer credential")
	ErrCredentialUnavailable = credclient.ErrUnavailable
	// ErrIdempotentRace: a request whose Idempotency-Key another request
	// used at the same moment (on another replica) could not be answered
	// with either's result.
	ErrIdempotentRace = errors.New("another request with this Idempotency-Key was being handled at the same moment: " +
		"retry with the same key to get its result")

	// Self-rotation (POST /v1/agents/self/rotate-key).
	ErrAgentRevoked          = errors.New("this agent has been revoked; its credentials no longer work")
	ErrNoRotationSecret      = errors.New("this agent has no rotation secret configured: an owner or admin must rotate its credentials (POST /v1/workspaces/{ws}/agents/{agentId}/rotate-key)")
	ErrInvalidAPIKey         = errors.New("invalid API key: send the agent's current API key (blg_agk_…) as the Bearer credential")
	ErrInvalidRotationSecret = errors.New("invalid rotation secret")
	ErrAlreadyRotated        = errors.New("the API key and rotation secret were rotated by another request in the meantime and are no longer valid")
)

// Reasons of the statuses built outside the table (they carry a RetryInfo).
const (
	reasonRateLimited     = "ROTATION_RATE_LIMITED"          // attempts with a valid API key, per client IP
	reasonFailuresLimited = "ROTATION_FAILURES_RATE_LIMITED" // attempts whose API key failed, per client IP
	reasonLockedOut       = "ROTATION_LOCKED_OUT"            // wrong rotation secrets, per client IP and API key
)

func newErrorTable() *errs.Table {
	return idem.Errors(errs.NewTable(Domain)).
		Add(ErrAgentNotFound, codes.NotFound, "AGENT_NOT_FOUND").
		Add(ErrInstallationNotFound, codes.NotFound, "INSTALLATION_NOT_FOUND").
		Add(ErrNameTaken, codes.AlreadyExists, "AGENT_NAME_TAKEN").
		Add(ErrInstallationNameTaken, codes.AlreadyExists, "INSTALLATION_NAME_TAKEN").
		Add(ErrGrantTooWide, codes.PermissionDenied, "GRANT_EXCEEDS_CALLER").
		Add(ErrRevoked, codes.FailedPrecondition, "AGENT_REVOKED").
		Add(ErrSelfRotateOnly, codes.PermissionDenied, "SELF_ROTATION_REQUIRED").
		Add(ErrNotAgent, codes.PermissionDenied, "NOT_AN_AGENT").
		Add(ErrAgentRevoked, codes.PermissionDenied, "AGENT_REVOKED").
		Add(ErrNoRotationSecret, codes.PermissionDenied, "NO_ROTATION_SECRET").
		Add(ErrInvalidAPIKey, codes.Unauthenticated, "INVALID_API_KEY").
		Add(ErrInvalidRotationSecret, codes.Unauthenticated, "INVALID_ROTATION_SECRET").
		Add(ErrAlreadyRotated, codes.Unauthenticated, "CREDENTIALS_ALREADY_ROTATED").
		Add(ErrIdempotentRace, codes.Aborted, "IDEMPOTENT_REQUEST_RACED").
		Add(ErrCredentialUnavailable, codes.Unavailable, "CREDENTIAL_SERVICE_UNAVAILABLE").
		Add(store.ErrUnavailable, codes.Unavailable, "STORE_UNAVAILABLE")
}
