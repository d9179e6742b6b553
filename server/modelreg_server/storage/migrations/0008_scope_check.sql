-- PostgreSQL regexes allow at most 255 repetitions, so 0004's `.{0,256}` rejected every label scope.
ALTER TABLE role_bindings DROP CONSTRAINT role_bindings_scope_check;
ALTER TABLE role_bindings ADD CONSTRAINT role_bindings_scope_check CHECK (
    scope = ''
    OR scope ~ '^models/[a-z][a-z0-9._-]{0,62}$'
    OR (scope ~ '^labels\.[A-Za-z][A-Za-z0-9_.-]{0,62}=' AND length(scope) <= 7 + 63 + 1 + 256)
);
