package credential

import (
	"errors"

	"google.golang.org/grpc/codes"

	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/store"
)

// Sentinel errors of the credential domain. Messages are safe to show.
var (
	errWorkspaceNotFound = errors.New("workspace not found")
	errMemberNotFound    = errors.New("member not found")
	errSubjectNotFound   = errors.New("subject not found")
	errLastOwner         = errors.New("a workspace must keep at least one owner")
	errNotOwner          = errors.New("only an owner can make, change or remove an owner")
	errDuplicateEmail    = errors.New("a member with this email already exists")
	errCredentialIDTaken = errors.New("a credential with this id exists already")
)

func errorTable() *errs.Table {
	return idem.Errors(errs.NewTable("credential.backlog")).
		Add(errWorkspaceNotFound, codes.NotFound, "WORKSPACE_NOT_FOUND").
		Add(errMemberNotFound, codes.NotFound, "MEMBER_NOT_FOUND").
		Add(errSubjectNotFound, codes.NotFound, "SUBJECT_NOT_FOUND").
		Add(errLastOwner, codes.FailedPrecondition, "LAST_OWNER").
		Add(errNotOwner, codes.PermissionDenied, "OWNER_REQUIRED").
		Add(errDuplicateEmail, codes.AlreadyExists, "DUPLICATE_EMAIL").
		Add(errCredentialIDTaken, codes.AlreadyExists, "CREDENTIAL_ID_TAKEN").
		Add(errSignInNotFound, codes.NotFound, "SIGN_IN_NOT_FOUND").
		Add(store.ErrUnavailable, codes.Unavailable, "STORE_UNAVAILABLE")
}
