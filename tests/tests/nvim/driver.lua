-- Drives a headless Neovim through the Cerebrum plugin as a user would, and writes what
-- happened to a JSON file for nvim_e2e.rs to check.
--
-- Keys go through nvim_feedkeys and are processed by Neovim's own main loop (so insert
-- mode, autocommands, mappings and timers behave as when typed); the steps run in a
-- coroutine resumed by timers, polling for each expected state with a deadline.
--
-- Environment: CEREBRUM_TEST_PORT, CEREBRUM_TEST_TOKEN, CEREBRUM_TEST_FILE,
-- CEREBRUM_TEST_RESULT, CEREBRUM_TEST_SCENARIO ('scripted' or 'real'),
-- CEREBRUM_TEST_TIMEOUT_MS (per wait).

local env = vim.env
local result = { steps = {} }
local wait_ms = tonumber(env.CEREBRUM_TEST_TIMEOUT_MS or '60000')
local co

local function finish()
  result.messages = vim.api.nvim_exec2('messages', { output = true }).output
  local ok, status = pcall(require('cerebrum').status)
  result.status = ok and status or tostring(status)
  local f = assert(io.open(env.CEREBRUM_TEST_RESULT, 'w'))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd('qa!')
end

local function step(name)
  table.insert(result.steps, name)
end

--- Yields until `cond()` is true; fails the run after the deadline.
local function wait_until(what, cond, timeout)
  local deadline = vim.uv.now() + (timeout or wait_ms)
  while true do
    local ok, value = pcall(cond)
    if ok and value then
      return value
    end
    if vim.uv.now() > deadline then
      error('timed out waiting for ' .. what, 0)
    end
    vim.defer_fn(function()
      assert(coroutine.resume(co))
    end, 50)
    coroutine.yield()
  end
end

local function feed(keys, remap)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), remap and 'mt' or 'nt', false)
end

local function ghost()
  local ns = require('cerebrum.inline').namespace
  local marks = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local m = marks[1]
  local d = m[4]
  local first = ''
  for _, chunk in ipairs(d.virt_text or {}) do
    first = first .. chunk[1]
  end
  local rest = {}
  for _, vl in ipairs(d.virt_lines or {}) do
    local line = ''
    for _, chunk in ipairs(vl) do
      line = line .. chunk[1]
    end
    table.insert(rest, line)
  end
  return {
    count = #marks,
    row = m[2],
    col = m[3],
    virt_text_pos = d.virt_text_pos,
    first_line = first,
    virt_lines = rest,
    text = table.concat(vim.list_extend({ first }, rest), '\n'),
  }
end

local function buffer_text()
  return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
end

local function find_line(pattern)
  for i, line in ipairs(vim.api.nvim_buf_get_lines(0, 0, -1, false)) do
    if line:find(pattern, 1, true) then
      return i
    end
  end
  error('no line with ' .. pattern, 0)
end

local function run()
  vim.cmd('filetype on')
  require('cerebrum').setup({
    host = '127.0.0.1',
    port = tonumber(env.CEREBRUM_TEST_PORT),
    token = env.CEREBRUM_TEST_TOKEN,
    debounce_ms = 100,
  })
  vim.cmd.edit(vim.fn.fnameescape(env.CEREBRUM_TEST_FILE))
  result.filetype = vim.bo.filetype
  local client = wait_until('the client to attach and initialize', function()
    local c = require('cerebrum').client()
    return c and c.initialized and c
  end)
  result.server_capabilities = client.server_capabilities
  result.position_encoding = client.offset_encoding
  step('attached')

  -- Type at the end of the file, in insert mode. A real model may have nothing to add
  -- at one spot (an empty answer); then type on, as a user would.
  local inline = require('cerebrum.inline')
  local typing = { 'Go    return a' }
  if env.CEREBRUM_TEST_SCENARIO == 'real' then
    vim.list_extend(typing, { ' +', ' b', ' *' })
  end
  local shown
  for i, keys in ipairs(typing) do
    local answered = (inline.state() or { answered = 0 }).answered
    feed(keys)
    shown = wait_until('a ghost-text suggestion or an empty answer', function()
      if vim.fn.mode() ~= 'i' then
        return false
      end
      local st = inline.state()
      local g = ghost()
      if g then
        return g
      end
      return st and st.answered > answered and not st.pending and 'empty'
    end)
    result.empty_answers = (result.empty_answers or 0) + (shown == 'empty' and 1 or 0)
    if shown ~= 'empty' then
      break
    elseif i == #typing then
      error('the server answered no suggestion ' .. #typing .. ' times', 0)
    end
  end
  result.ghost = shown
  result.line_typed = vim.api.nvim_get_current_line()
  result.cursor_typed = vim.api.nvim_win_get_cursor(0)
  result.inline_after_show = require('cerebrum.inline').state()
  step('ghost text shown')

  if env.CEREBRUM_TEST_SCENARIO == 'scripted' then
    -- One word first; the rest stays shown.
    feed('<M-w>', true)
    wait_until('the word to be accepted', function()
      return vim.api.nvim_get_current_line() ~= result.line_typed
    end, 5000)
    result.line_after_word = vim.api.nvim_get_current_line()
    result.ghost_after_word = ghost()
    step('word accepted')
  end

  local before = buffer_text()
  feed('<Tab>', true)
  wait_until('<Tab> to insert the suggestion', function()
    return buffer_text() ~= before
  end, 5000)
  result.buffer_after_tab = buffer_text()
  result.inline_after_tab = require('cerebrum.inline').state()
  step('suggestion accepted')

  feed('<Esc>')
  wait_until('normal mode', function()
    return vim.fn.mode() == 'n'
  end, 5000)
  result.ghost_after_esc = ghost() or vim.NIL
  step('dismissed')

  -- The code-action menu, as vim.lsp.buf.code_action() builds it, inside a sync function.
  vim.api.nvim_win_set_cursor(0, { find_line('time.sleep'), 8 })
  local titles
  vim.ui.select = function(items, _, on_choice)
    titles = {}
    for _, item in ipairs(items) do
      table.insert(titles, item.action.title)
    end
    on_choice(nil)
  end
  vim.lsp.buf.code_action()
  result.code_actions = wait_until('the code-action menu', function()
    return titles
  end)
  step('code actions listed')

  if env.CEREBRUM_TEST_SCENARIO == 'scripted' then
    vim.api.nvim_win_set_cursor(0, { find_line('def fetch_all'), 0 })
    feed('Vj:Cerebrum instruct add type hints<CR>')
    wait_until('the instruct command to run', function()
      return vim.fn.mode() == 'n' and vim.api.nvim_exec2('messages', { output = true }).output:find('add type hints', 1, true)
    end, 5000)
    -- Let the request reach the server before quitting.
    local t = vim.uv.now()
    wait_until('a moment', function()
      return vim.uv.now() - t > 300
    end)
    step('instruct sent')
  end
end

co = coroutine.create(function()
  local ok, err = xpcall(run, debug.traceback)
  if not ok then
    result.error = err
  end
  finish()
end)
assert(coroutine.resume(co))
