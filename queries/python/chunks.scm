; Chunk boundaries for the context engine (Python).
;
; @chunk  a definition that becomes its own chunk; nested definitions are
;         where an oversized chunk splits.
; @name   the symbol that labels the chunk (`path::Outer::inner`).
;
; @leading  comments that belong to the definition right below them.
;
; Patterns start at most two levels below the node being chunked (the file,
; or a definition being split), so `class > block > def` and
; `impl > declaration_list > fn` are reached; deeper ones when their parent splits.

(decorated_definition
  definition: (function_definition
    name: (identifier) @name)) @chunk

(decorated_definition
  definition: (class_definition
    name: (identifier) @name)) @chunk

; `async def` is a function_definition with an `async` keyword.
(function_definition
  name: (identifier) @name) @chunk

(class_definition
  name: (identifier) @name) @chunk

(comment) @leading
