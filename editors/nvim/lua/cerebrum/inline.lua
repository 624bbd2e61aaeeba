--- Inline (ghost-text) completions for Neovim 0.11, which lacks `vim.lsp.inline_completion`.
---
--- While typing in insert mode, a debounced `textDocument/inlineCompletion` request goes to
--- the edge with a `partialResultToken` (an extension lsp-edge accepts; LSP 3.18 has no
--- such field for this method). Each `$/progress` partial result carries the completion
--- so far and replaces what is shown; the final answer replaces it once more. A newer
--- request cancels the one it supersedes (`$/cancelRequest`), and answers to anything
--- but the newest request are dropped.
---
--- The suggestion is drawn with extmarks: its first line as inline virtual text at the
--- cursor, the rest as virtual lines below.

local M = {}

local ns = vim.api.nvim_create_namespace('cerebrum.inline')
local augroup = vim.api.nvim_create_augroup('cerebrum.inline', { clear = true })

--- @class cerebrum.Suggestion
--- @field row integer          0-based row of the cursor it was made for
--- @field col integer          byte column of that cursor
--- @field text string          what accepting inserts at the cursor
--- @field replace_end integer[]? {row, col} of text after the cursor that accepting replaces

--- @class cerebrum.BufState
--- @field client_id integer
--- @field timer uv.uv_timer_t?
--- @field request_id integer?  the newest request still unanswered
--- @field token string?        its partialResultToken
--- @field anchor integer[]?    {row, col} the pending request or shown suggestion belongs to
--- @field suggestion cerebrum.Suggestion?
--- @field own_edit integer?    changedtick of our own partial accept (keeps the rest shown)
--- @field stats table

--- @type table<integer, cerebrum.BufState>
local buffers = {}
--- @type table<string, integer> partialResultToken -> bufnr
local tokens = {}
local next_token = 0

local function cursor(bufnr)
  local win = vim.fn.bufwinid(bufnr)
  if win == -1 then
    return nil
  end
  local pos = vim.api.nvim_win_get_cursor(win)
  return { pos[1] - 1, pos[2] }
end

local function same_pos(a, b)
  return a ~= nil and b ~= nil and a[1] == b[1] and a[2] == b[2]
end

local function clear_marks(bufnr)
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
end

--- Cancels the pending request of `bufnr`, if any.
local function cancel(bufnr)
  local st = buffers[bufnr]
  if not st then
    return
  end
  if st.timer then
    st.timer:stop()
  end
  if st.request_id then
    local client = vim.lsp.get_client_by_id(st.client_id)
    if client then
      client:cancel_request(st.request_id)
    end
    st.stats.cancelled = st.stats.cancelled + 1
    st.request_id = nil
  end
  if st.token then
    tokens[st.token] = nil
    st.token = nil
  end
end

--- Hides the suggestion of `bufnr` (default: current) and cancels its request.
function M.dismiss(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local st = buffers[bufnr]
  if not st then
    return
  end
  cancel(bufnr)
  st.suggestion = nil
  st.anchor = nil
  clear_marks(bufnr)
end

--- Whether a suggestion is shown in the current buffer, for the cursor where it is.
function M.visible()
  local bufnr = vim.api.nvim_get_current_buf()
  local st = buffers[bufnr]
  return st ~= nil and st.suggestion ~= nil and same_pos(cursor(bufnr), { st.suggestion.row, st.suggestion.col })
end

--- Splits text on "\n" (LSP text may also carry "\r\n").
local function lines_of(text)
  return vim.split(text:gsub('\r\n', '\n'), '\n', { plain = true })
end

local function render(bufnr, sug)
  clear_marks(bufnr)
  if sug.text == '' then
    return
  end
  local lines = lines_of(sug.text)
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], 'CerebrumSuggestion' } }
  end
  vim.api.nvim_buf_set_extmark(bufnr, ns, sug.row, sug.col, {
    virt_text = lines[1] ~= '' and { { lines[1], 'CerebrumSuggestion' } } or nil,
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
    priority = 1000,
  })
end

--- Converts an LSP position to {row, byte col} in `bufnr`.
local function to_byte_pos(bufnr, pos, encoding)
  local line = vim.api.nvim_buf_get_lines(bufnr, pos.line, pos.line + 1, false)[1]
  if not line then
    return { pos.line, 0 }
  end
  if encoding == 'utf-8' then
    return { pos.line, math.min(pos.character, #line) }
  end
  return { pos.line, vim.str_byteindex(line, encoding, pos.character, false) }
end

--- The text of `item` as a plain string (snippets are shown and inserted as text).
local function item_text(item)
  local text = item.insertText
  if type(text) == 'table' then
    text = text.value
  end
  return type(text) == 'string' and text or nil
end

--- Turns the first item of an InlineCompletionList / InlineCompletionItem[] into what to
--- show at `at` ({row, col}). An item whose range starts before the cursor repeats the text
--- already typed there; that part is not shown again. Returns nil when nothing fits.
--- @return cerebrum.Suggestion?
function M.suggestion_from(result, bufnr, at, encoding)
  if type(result) ~= 'table' then
    return nil
  end
  local items = result.items or result
  local item = items[1]
  local text = item and item_text(item)
  if not text or text == '' then
    return nil
  end
  local replace_end
  if item.range then
    local s = to_byte_pos(bufnr, item.range.start, encoding)
    local e = to_byte_pos(bufnr, item.range['end'], encoding)
    if s[1] ~= at[1] or s[2] > at[2] or e[1] < at[1] or (e[1] == at[1] and e[2] < at[2]) then
      return nil
    end
    local typed = vim.api.nvim_buf_get_text(bufnr, s[1], s[2], at[1], at[2], {})[1] or ''
    if text:sub(1, #typed) ~= typed then
      return nil
    end
    text = text:sub(#typed + 1)
    if not same_pos(e, at) then
      replace_end = e
    end
  end
  if text == '' then
    return nil
  end
  return { row = at[1], col = at[2], text = text, replace_end = replace_end }
end

local function show(bufnr, result, encoding)
  local st = buffers[bufnr]
  local at = cursor(bufnr)
  if not st or not same_pos(at, st.anchor) or vim.fn.mode() ~= 'i' then
    return false
  end
  local sug = M.suggestion_from(result, bufnr, at, encoding)
  st.suggestion = sug
  if sug then
    render(bufnr, sug)
    st.stats.shown = st.stats.shown + 1
  else
    clear_marks(bufnr)
  end
  return sug ~= nil
end

--- `$/progress` handler for the client: our partial results, else Neovim's own handler.
function M.progress_handler(err, params, ctx, config)
  local bufnr = params and tokens[params.token]
  if not bufnr then
    return vim.lsp.handlers['$/progress'](err, params, ctx, config)
  end
  local st = buffers[bufnr]
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  if st and client then
    st.stats.partials = st.stats.partials + 1
    show(bufnr, params.value, client.offset_encoding)
  end
  return vim.NIL
end

local function request(bufnr, tick)
  local st = buffers[bufnr]
  if not st or vim.api.nvim_get_current_buf() ~= bufnr or vim.fn.mode() ~= 'i' then
    return
  end
  if vim.api.nvim_buf_get_changedtick(bufnr) ~= tick or not same_pos(cursor(bufnr), st.anchor) then
    return
  end
  local client = vim.lsp.get_client_by_id(st.client_id)
  if not client or not client.initialized then
    return
  end
  cancel(bufnr)
  next_token = next_token + 1
  local token = ('cerebrum-inline-%d'):format(next_token)
  local win = vim.fn.bufwinid(bufnr)
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = 2 } -- Automatic: typing, not an explicit request.
  params.partialResultToken = token
  local anchor = st.anchor
  local request_id
  local ok
  ok, request_id = client:request('textDocument/inlineCompletion', params, function(err, result)
    if st.request_id ~= request_id then
      return -- superseded or cancelled
    end
    st.request_id = nil
    tokens[token] = nil
    st.token = nil
    if err then
      st.stats.errors = st.stats.errors + 1
      st.stats.last_error = err.message
      return
    end
    st.stats.answered = st.stats.answered + 1
    if same_pos(anchor, st.anchor) then
      show(bufnr, result, client.offset_encoding)
    end
  end, bufnr)
  if ok and request_id then
    st.request_id = request_id
    st.token = token
    tokens[token] = bufnr
    st.stats.requests = st.stats.requests + 1
  end
end

--- Debounces a request for the cursor as it is now.
local function schedule(bufnr)
  local st = buffers[bufnr]
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  st.anchor = cursor(bufnr)
  st.timer = st.timer or vim.uv.new_timer()
  st.timer:stop()
  st.timer:start(
    require('cerebrum').config.debounce_ms,
    0,
    vim.schedule_wrap(function()
      request(bufnr, tick)
    end)
  )
end

--- The part of `text` that accepting one `kind` ('line' or 'word') takes.
function M.partial(text, kind)
  if kind == 'line' then
    local nl = text:find('\n', 1, true)
    if nl == 1 then
      -- At a line end the next line is what one line means.
      local nl2 = text:find('\n', 2, true)
      return nl2 and text:sub(1, nl2 - 1) or text
    end
    return nl and text:sub(1, nl - 1) or text
  end
  local piece = text:match('^\n[ \t]*') or text:match('^[ \t]*[%w_]+') or text:match('^[ \t]*[^%w_%s]+')
  return piece or text:sub(1, 1)
end

local function insert_at(bufnr, row, col, end_pos, text)
  local lines = lines_of(text)
  local erow, ecol = row, col
  if end_pos then
    erow, ecol = end_pos[1], end_pos[2]
  end
  vim.api.nvim_buf_set_text(bufnr, row, col, erow, ecol, lines)
  local last_row = row + #lines - 1
  local last_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { last_row + 1, last_col })
  return { last_row, last_col }
end

--- Accepts the suggestion shown in the current buffer: all of it, one line or one word.
--- @param kind 'all'|'line'|'word'
--- @return boolean accepted
function M.accept(kind)
  local bufnr = vim.api.nvim_get_current_buf()
  local st = buffers[bufnr]
  if not M.visible() then
    return false
  end
  local sug = st.suggestion
  cancel(bufnr)
  clear_marks(bufnr)
  if kind == 'all' or kind == nil then
    st.suggestion = nil
    st.anchor = nil
    insert_at(bufnr, sug.row, sug.col, sug.replace_end, sug.text)
    st.stats.accepted = st.stats.accepted + 1
    return true
  end
  local piece = M.partial(sug.text, kind)
  local rest = sug.text:sub(#piece + 1)
  local at = insert_at(bufnr, sug.row, sug.col, nil, piece)
  st.stats.accepted_partial = st.stats.accepted_partial + 1
  if rest == '' then
    st.suggestion = nil
    st.anchor = nil
    return true
  end
  -- Keep showing the rest at the new cursor; our own edit must not dismiss it.
  st.suggestion = { row = at[1], col = at[2], text = rest, replace_end = sug.replace_end }
  st.anchor = at
  st.own_edit = vim.api.nvim_buf_get_changedtick(bufnr)
  render(bufnr, st.suggestion)
  return true
end

--- Counters and the shown suggestion of `bufnr`, for `:Cerebrum status` and tests.
function M.state(bufnr)
  local st = buffers[bufnr or vim.api.nvim_get_current_buf()]
  if not st then
    return nil
  end
  return vim.tbl_extend('force', vim.deepcopy(st.stats), {
    visible = st.suggestion ~= nil,
    text = st.suggestion and st.suggestion.text,
    pending = st.request_id ~= nil,
  })
end

--- The namespace of the ghost-text extmarks.
M.namespace = ns

--- Starts ghost-text completions in `bufnr` from client `client_id`.
function M.attach(bufnr, client_id)
  if buffers[bufnr] then
    buffers[bufnr].client_id = client_id
    return
  end
  buffers[bufnr] = {
    client_id = client_id,
    stats = {
      requests = 0,
      cancelled = 0,
      answered = 0,
      partials = 0,
      shown = 0,
      accepted = 0,
      accepted_partial = 0,
      errors = 0,
    },
  }
  vim.api.nvim_create_autocmd({ 'TextChangedI', 'TextChangedP' }, {
    group = augroup,
    buffer = bufnr,
    callback = function()
      local st = buffers[bufnr]
      if st.own_edit == vim.api.nvim_buf_get_changedtick(bufnr) then
        st.own_edit = nil
        return
      end
      M.dismiss(bufnr)
      schedule(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd('CursorMovedI', {
    group = augroup,
    buffer = bufnr,
    callback = function()
      local st = buffers[bufnr]
      if st.anchor and not same_pos(cursor(bufnr), st.anchor) then
        M.dismiss(bufnr)
      end
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = augroup,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ 'BufUnload', 'LspDetach' }, {
    group = augroup,
    buffer = bufnr,
    callback = function(ev)
      if ev.event == 'LspDetach' and ev.data and ev.data.client_id ~= client_id then
        return
      end
      M.dismiss(bufnr)
      local st = buffers[bufnr]
      if st and st.timer then
        st.timer:close()
      end
      buffers[bufnr] = nil
      return true -- remove this autocmd
    end,
  })
end

return M
