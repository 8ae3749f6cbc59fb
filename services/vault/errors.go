package vault

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"

	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/store"
)

// Domain is the ErrorInfo domain of this service's errors.
const Domain = "vault.backlog"

// MsgSealed is what every value operation answers while no key-encryption
// key is loaded.
const MsgSealed = "vault is sealed: no key-encryption key loaded (-vault-kek-file)"

// Sentinel errors of the vault. Their messages are shown to callers: they
// name secrets, never hold a value, a ciphertext or key material.
var (
	ErrNotFound     = errors.New("secret not found")
	ErrNameTaken    = errors.New("a secret with this name already exists in the workspace")
	ErrRevoked      = errors.New("secret revoked")
	ErrExpired      = errors.New("secret expired")
	ErrWrongKind    = errors.New("secret of the wrong kind")
	ErrBadValue     = errors.New("secret value unusable here")
	ErrSealed       = errors.New(MsgSealed)
	ErrKeyMissing   = errors.New("data key unavailable")
	ErrUnreadable   = errors.New("secret unreadable")
	ErrEgressDenied = errors.New("egress refused")
	ErrUpstream     = errors.New("HTTP request failed")
	ErrUpstreamSlow = errors.New("HTTP request timed out")
	ErrRotation     = errors.New("key-encryption key rotation failed")
	ErrInUse        = errors.New("secret in use")
	ErrHostDenied   = errors.New("secret not allowed to this host")
	ErrBadReference = errors.New("unusable secret reference")
	ErrNoConnection = errors.New("connection not found")
	ErrNoAction     = errors.New("action not found")
)

func newErrorTable() *errs.Table {
	return idem.Errors(errs.NewTable(Domain)).
		Add(ErrNotFound, codes.NotFound, "SECRET_NOT_FOUND").
		Add(ErrNameTaken, codes.AlreadyExists, "SECRET_NAME_TAKEN").
		Add(ErrRevoked, codes.FailedPrecondition, "SECRET_REVOKED").
		Add(ErrExpired, codes.FailedPrecondition, "SECRET_EXPIRED").
		Add(ErrWrongKind, codes.FailedPrecondition, "SECRET_WRONG_KIND").
		Add(ErrBadValue, codes.FailedPrecondition, "SECRET_VALUE_UNUSABLE").
		Add(ErrSealed, codes.Unavailable, "VAULT_SEALED"). // 503, as Vault answers while sealed
		Add(ErrKeyMissing, codes.FailedPrecondition, "DATA_KEY_UNAVAILABLE").
		Add(ErrUnreadable, codes.DataLoss, "SECRET_UNREADABLE").
		Add(ErrEgressDenied, codes.PermissionDenied, "EGRESS_DENIED").
		Add(ErrUpstream, codes.Unavailable, "HTTP_REQUEST_FAILED").
		Add(ErrUpstreamSlow, codes.DeadlineExceeded, "HTTP_REQUEST_TIMEOUT").
		Add(ErrRotation, codes.FailedPrecondition, "KEK_ROTATION_FAILED").
		Add(ErrInUse, codes.Aborted, "SECRET_IN_USE").
		Add(ErrHostDenied, codes.PermissionDenied, "SECRET_HOST_NOT_ALLOWED").
		Add(ErrBadReference, codes.InvalidArgument, "SECRET_REFERENCE_INVALID").
		Add(ErrVersionNotFound, codes.NotFound, "SECRET_VERSION_NOT_FOUND").
		Add(ErrNoConnection, codes.NotFound, "CONNECTION_NOT_FOUND").
		Add(ErrNoAction, codes.NotFound, "ACTION_NOT_FOUND").
		Add(ErrNoSubscription, codes.NotFound, "EVENT_SUBSCRIPTION_NOT_FOUND").
		Add(store.ErrUnavailable, codes.Unavailable, "STORE_UNAVAILABLE")
}

// detailed is a sentinel with a message written for the caller (naming the
// secret and saying what to do), matched by errors.Is on the sentinel.
type detailed struct {
	sentinel error
	msg      string
}

func (e *detailed) Error() string { return e.msg }
func (e *detailed) Unwrap() error { return e.sentinel }

// fail returns sentinel with a message of its own.
func fail(sentinel error, format string, args ...any) error {
	return &detailed{sentinel: sentinel, msg: fmt.Sprintf(format, args...)}
}
