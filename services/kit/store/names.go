package store

import "fmt"

// Names is a unique index: one owner id per key, as in "one automation per
// name in a workspace". Key folds what the index is keyed by (e.g. the
// workspace and the case-folded name); Taken is the error a second owner
// gets, wrapped with the name.
type Names struct {
	Bucket Bucket
	Key    func(scope, name string) []byte
	Taken  error
}

// Owner returns the id that holds name in scope, "" when none does.
func (n Names) Owner(tx ReadTx, scope, name string) (string, error) {
	v, err := tx.Get(n.Bucket, n.Key(scope, name))
	if err != nil {
		return "", err
	}
	return string(v), nil
}

// Free fails with Taken if an owner other than self (which may be "") holds
// name in scope.
func (n Names) Free(tx ReadTx, scope, name, self string) error {
	owner, err := n.Owner(tx, scope, name)
	if err != nil {
		return err
	}
	if owner != "" && owner != self {
		return fmt.Errorf("%w: %q", n.Taken, name)
	}
	return nil
}

// Claim records that id holds name in scope; Taken if another owner does.
func (n Names) Claim(tx WriteTx, scope, name, id string) error {
	if err := n.Free(tx, scope, name, id); err != nil {
		return err
	}
	return tx.Put(n.Bucket, n.Key(scope, name), []byte(id))
}

// Release frees name in scope if id still holds it.
func (n Names) Release(tx WriteTx, scope, name, id string) error {
	owner, err := n.Owner(tx, scope, name)
	if err != nil || owner != id {
		return err
	}
	return tx.Delete(n.Bucket, n.Key(scope, name))
}
