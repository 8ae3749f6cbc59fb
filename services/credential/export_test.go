package credential

// FlushRefusals writes the summaries of coalescing windows that have ended,
// as the flush loop does every few seconds.
func (s *Service) FlushRefusals() { s.flushRefusals() }
