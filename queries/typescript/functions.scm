; inherits: javascript
;
; Functions for the refactor action (TypeScript): JavaScript's, and what only
; TypeScript has. The captures are described in javascript/functions.scm.

(abstract_class_declaration) @container
