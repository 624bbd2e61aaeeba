; Chunk boundaries for the context engine (Rust).
;
; @chunk  an item that becomes its own chunk; nested items (methods in an
;         impl or trait, items in a mod) are where an oversized chunk splits.
; @name   the symbol that labels the chunk (`path::Type::method`).
;
; @leading  attributes and comments that belong to the item right below them.
;
; Patterns start at most two levels below the node being chunked (the file,
; or a definition being split), so `class > block > def` and
; `impl > declaration_list > fn` are reached; deeper ones when their parent splits.

(function_item
  name: (identifier) @name) @chunk

(impl_item
  type: (_) @name) @chunk

(trait_item
  name: (type_identifier) @name) @chunk

(struct_item
  name: (type_identifier) @name) @chunk

(enum_item
  name: (type_identifier) @name) @chunk

(union_item
  name: (type_identifier) @name) @chunk

(mod_item
  name: (identifier) @name) @chunk

(macro_definition
  name: (identifier) @name) @chunk

(attribute_item) @leading
(line_comment) @leading
(block_comment) @leading
